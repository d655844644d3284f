"""The MNIST teacher and FitNet against pylearn2's semantics (maxout mnist.yaml, the authors' MNIST FitNet yaml).

Untied convolution biases (``MaxoutConvC01B``'s default ``tied_b=False``), initialisation, max-norm limits,
dropout of the teacher, and the teacher's SGD schedules (``ExponentialDecay`` per update,
``MomentumAdjustor`` per epoch). Tiny shapes; the kernels are compared with the float64 reference.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from fitnets_fast import _backend, config, models, ops, reference
from fitnets_fast.nn import HintLoss, MaxoutConv2d, MaxoutLinear
from fitnets_fast.optim import MaxNorm
from fitnets_fast.schedules import exponential_decay, linear_decay, linear_ramp
from fitnets_fast.testing import EPS_MARGIN, check_against_reference

D = torch.float64
MNIST_NETS = ["teacher_mnist", "teacher_mnist_code", "fitnet_mnist", "fitnet_mnist_code"]


def _r(*shape):
    return torch.randn(*shape, dtype=D)


# ------------------------------------------------------------------------------------------ untied bias
def _untied_by_hand(x, w, b, pieces, padding, pool):
    """conv as an explicit im2col product, one bias per filter and location, maxout, ceil-mode pooling."""
    n, _, h, wd = x.shape
    k = w.shape[2]
    ho, wo = h + 2 * padding - k + 1, wd + 2 * padding - k + 1
    cols = F.unfold(x, k, padding=padding)                                  # (N, C_in*k*k, ho*wo)
    z = (w.flatten(1) @ cols).view(n, w.shape[0], ho, wo) + b               # (N, C*P, ho, wo)
    y = z.view(n, w.shape[0] // pieces, pieces, ho, wo).amax(dim=2)
    return y if pool is None else F.max_pool2d(y, pool[0], pool[1], ceil_mode=True)


@pytest.mark.parametrize("padding,pool", [(0, None), (2, (3, 2)), (1, (2, 2))])
def test_reference_untied_bias_is_one_bias_per_filter_and_location(padding, pool):
    x, w = _r(2, 3, 9, 7), _r(10, 3, 3, 3)
    b = _r(10, 7 + 2 * padding, 5 + 2 * padding)
    got = reference.maxout_conv2d(x, w, b, 2, 1, padding, pool)
    torch.testing.assert_close(got, _untied_by_hand(x, w, b, 2, padding, pool), rtol=1e-12, atol=1e-12)


def test_untied_bias_constant_over_locations_equals_tied():
    x, w, b = _r(2, 3, 8, 8), _r(6, 3, 3, 3), _r(6)
    untied = b[:, None, None].expand(6, 6, 6).contiguous()
    for backend in ["reference"] + [n for n in ("cpp",) if _backend.module(n) is not None]:
        torch.testing.assert_close(ops.maxout_conv2d(x, w, untied, 3, pool=(2, 2), backend=backend),
                                   ops.maxout_conv2d(x, w, b, 3, pool=(2, 2), backend=backend))


def test_untied_bias_of_the_wrong_size_is_refused():
    x, w = _r(2, 3, 8, 8), _r(6, 3, 3, 3)
    with pytest.raises(ValueError, match=r"untied bias must have shape \(6, 6, 6\)"):
        ops.maxout_conv2d(x, w, _r(6, 8, 8), 2)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.maxout_linear(_r(2, 5), _r(6, 5), _r(6, 1, 1), 2)
    with pytest.raises(ValueError, match="untied_bias"):
        MaxoutConv2d(3, 4, 3, untied_bias=(6,))
    with pytest.raises(ValueError, match="bias=True"):
        MaxoutConv2d(3, 4, 3, bias=False, untied_bias=(6, 6))


CPP = pytest.mark.skipif(_backend.module("cpp") is None, reason="C++ kernels not built")
KERNEL_BACKENDS = [pytest.param("cpp", marks=CPP), "triton"]


def _kernel_backend(name):
    if name == "triton" and _backend.module("triton") is None:
        pytest.skip(f"triton unavailable: {_backend.unavailable_reason('triton')}")
    if name == "triton" and not torch.cuda.is_available():
        import os
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("no CUDA and TRITON_INTERPRET is not 1")
    return name


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pool", [None, (3, 2), (2, 2)])
@pytest.mark.parametrize("pieces", [2, 3])    # 2: the kernels' fused two-piece path; 3: one pass per piece
def test_kernels_match_reference_with_untied_bias(backend, dtype, pool, pieces):
    backend = _kernel_backend(backend)
    x, w, b = _r(3, 5, 11, 9), _r(7 * pieces, 5, 3, 3), _r(7 * pieces, 11, 9)     # pad 1 keeps 11x9

    def kernel(x, w, b):
        return ops.maxout_conv2d(x, w, b, pieces, 1, 1, pool, backend=backend)

    def ref(x, w, b):
        return reference.maxout_conv2d(x, w, b, pieces, 1, 1, pool)

    check_against_reference(kernel, ref, (x, w, b), dtype, names=["x", "weight", "bias"], margin=EPS_MARGIN)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pieces, activation", [(2, "maxout"), (3, "maxout"), (1, "relu")])
def test_hint_loss_kernels_match_reference_with_untied_bias(backend, dtype, pieces, activation):
    backend = _kernel_backend(backend)
    g, h, w, b = _r(3, 7, 6, 6), _r(3, 5, 5, 5), _r(5 * pieces, 7, 2, 2), _r(5 * pieces, 5, 5)

    def kernel(g, h, w, b):
        return ops.hint_loss(g, h, w, b, pieces, activation=activation, backend=backend)

    def ref(g, h, w, b):
        return reference.hint_loss(g, h, w, b, pieces, activation=activation)

    check_against_reference(kernel, ref, (g, h, w, b), dtype, names=["guided", "hint", "weight", "bias"])


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
@pytest.mark.parametrize("pool", [None, (2, 2)])
def test_layer_untied_bias_is_stored_location_major_and_trains_as_the_reference(backend, pool):
    if backend != "reference":
        backend = _kernel_backend(backend)
    layer = MaxoutConv2d(5, 7, 3, pieces=2, padding=1, pool=pool, untied_bias=(11, 9), backend=backend).double()
    assert layer.bias.stride() == (1, 9 * 14, 14)     # (C*K, H, W) with C*K innermost in memory
    with torch.no_grad():
        layer.bias.normal_()
        layer.weight.normal_()
    incoming = []
    layer.bias.register_hook(lambda g: incoming.append(g.stride()))
    x = _r(3, 5, 11, 9).requires_grad_()
    out = layer(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    if backend == "cpp":    # the kernel's bias gradient arrives in the parameter's layout: no copy to accumulate it
        assert incoming == [layer.bias.stride()]
    x_ref, w_ref, b_ref = (t.detach().contiguous().requires_grad_() for t in (x, layer.weight, layer.bias))
    assert b_ref.is_contiguous()
    ref = reference.maxout_conv2d(x_ref, w_ref, b_ref, 2, 1, 1, pool)
    ref.backward(grad)
    torch.testing.assert_close(out, ref)
    for got, want in ((x.grad, x_ref.grad), (layer.weight.grad, w_ref.grad), (layer.bias.grad, b_ref.grad)):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------------ the models
@pytest.mark.parametrize("name", MNIST_NETS)
def test_mnist_nets_have_untied_conv_biases_zero_init_and_yaml_irange(name):
    net = models.build(name, backend="reference")
    shape = net.input_shape
    for layer in net.layers:
        det, out = models._geometry(layer, shape)
        if isinstance(layer, MaxoutConv2d):
            assert tuple(layer.bias.shape) == (layer.out_features * layer.pieces,) + det[1:]
            assert layer.untied_bias == det[1:]
        else:
            assert isinstance(layer, MaxoutLinear) and tuple(layer.bias.shape) == (10,)
        assert torch.all(layer.bias == 0)
        assert layer.weight.abs().max() <= 0.005 and layer.weight.abs().max() > 0.004
        shape = out
    x = torch.rand(3, *net.input_shape)
    assert net(x).shape == (3, 10)


def test_mnist_weight_counts_unchanged_by_untied_biases():
    counts = {n: models.count_params(models.build(n)) for n in MNIST_NETS}
    assert counts == {"teacher_mnist": 360_816, "teacher_mnist_code": 418_416, "fitnet_mnist": 29_944,
                      "fitnet_mnist_code": 35_992}
    # the untied biases of the teacher: one per detector-map location of h0 (21x21), h1 (9x9), h2 (6x6), + 10
    teacher = models.build("teacher_mnist")
    assert sum(layer.bias.numel() for layer in teacher.layers) == 96 * 21 * 21 + 96 * 9 * 9 + 48 * 6 * 6 + 10


def test_mnist_max_norm_limits_are_the_yamls_and_apply_per_filter_and_class():
    limits = {"teacher_mnist": [0.9, 1.9365, 1.9365, 1.9365],
              "fitnet_mnist": [0.9, 0.9, 1.9365, 1.9365, 1.9365, 1.9365, 1.9365]}
    for name, expected in limits.items():
        net = models.build(name, backend="reference")
        assert [layer.max_norm for layer in net.layers] == expected
        with torch.no_grad():
            for layer in net.layers:
                layer.weight.normal_().mul_(3)
                layer.bias.fill_(5.0)
        MaxNorm([net]).apply()
        for layer in net.layers:
            norms = layer.weight.flatten(1).norm(dim=1)        # one norm per piece's filter / class column
            assert torch.allclose(norms, torch.full_like(norms, layer.max_norm), rtol=1e-5)
            assert torch.all(layer.bias == 5.0)                # biases are not constrained


def test_mnist_teacher_dropout_is_the_yamls_and_off_at_test_time():
    net = models.build("teacher_mnist", backend="reference")
    assert net.input_dropout == [0.2, 0.5, 0.5, 0.5]           # input_include_probs h0 .8, default .5 (y too)
    assert net.input_dropout_scale == [1.0, 2.0, 2.0, 2.0]     # input_scales h0 1, default 1/p
    student = models.build("fitnet_mnist", backend="reference")
    assert set(student.input_dropout) == {0.0}                 # the FitNet yaml's KD / hint costs: no dropout
    net.eval()
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(net(x), net(x))                 # no masks and no rescaling at test time


def test_mnist_teacher_first_layer_input_kept_unscaled_in_training():
    net = models.build("teacher_mnist", backend="reference").train()
    x = torch.ones(2, 1, 28, 28)
    seen = []
    net.layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    torch.manual_seed(3)
    net.forward_to(x, 0)
    kept = seen[0]
    assert set(kept.unique().tolist()) <= {0.0, 1.0}            # kept pixels unscaled (input_scales h0: 1)
    assert 0.7 < kept.mean().item() < 0.9                       # include probability .8


def test_regressor_copies_the_hint_layers_untied_biases():
    teacher, student = models.build("teacher_mnist"), models.build("fitnet_mnist")
    hint, guided = teacher.layer_output_shape(teacher.hint_layer), student.layer_output_shape(student.guided_layer)
    assert hint == (48, 4, 4) and guided == (16, 4, 4)
    reg = models.build_regressor(hint, guided, 2, untied_bias=True, backend="reference")
    assert isinstance(reg, HintLoss) and tuple(reg.bias.shape) == (96, 4, 4) and reg.kernel_size == 1
    assert tuple(models.build_regressor(hint, guided, 2).bias.shape) == (96,)
    g = torch.rand(3, *guided, requires_grad=True)
    loss = reg(g, torch.rand(3, *hint))
    loss.backward()
    assert reg.bias.grad.shape == (96, 4, 4) and g.grad is not None


# ------------------------------------------------------------------------------------- the mnist preset
def test_mnist_preset_is_the_yamls_recipe():
    cfg = config.make_config("mnist")
    assert (cfg.teacher, cfg.student, cfg.batch_size) == ("teacher_mnist", "fitnet_mnist", 128)
    assert (cfg.teacher_lr, cfg.teacher_lr_schedule, cfg.teacher_lr_decay_factor, cfg.teacher_lr_min) == \
        (0.05, "exponential", 1.00004, 1e-6)
    assert (cfg.teacher_momentum, cfg.teacher_momentum_final, cfg.teacher_momentum_start,
            cfg.teacher_momentum_saturate, cfg.teacher_patience) == (0.5, 0.7, 1, 250, 100)
    assert (cfg.lr, cfg.rms_decay, cfg.rms_floor, cfg.temperature, cfg.lambda_init) == (0.0005, 0.9, 1e-5, 3.0, 4.0)
    assert (cfg.lambda_start, cfg.lambda_saturate, cfg.lambda_final) == (5, 150, 1.0)


def test_teacher_lr_decays_per_update_and_momentum_ramps_per_epoch():
    # ExponentialDecay: the first update uses the initial rate, each later one divides it by the factor once more.
    assert exponential_decay(0, 0.05, 1.00004, 1e-6) == 0.05
    assert math.isclose(exponential_decay(1, 0.05, 1.00004, 1e-6), 0.05 / 1.00004, rel_tol=1e-15)
    assert math.isclose(exponential_decay(390 * 10, 0.05, 1.00004, 1e-6), 0.05 / 1.00004 ** 3900, rel_tol=1e-12)
    assert exponential_decay(10 ** 7, 0.05, 1.00004, 1e-6) == 1e-6
    # MomentumAdjustor (start 1, saturate 250): epoch e trains with alpha = (e - 1) / 249.
    assert linear_ramp(1, 0.5, 0.7, 1, 250) == 0.5
    assert math.isclose(linear_ramp(2, 0.5, 0.7, 1, 250), 0.5 + 0.2 / 249)
    assert math.isclose(linear_ramp(250, 0.5, 0.7, 1, 250), 0.7) and linear_ramp(400, 0.5, 0.7, 1, 250) == 0.7
    # lambda: 4 until epoch 5, then 4 - 3/146 * (e - 4), 1 from epoch 150 (the paper's "reached 1").
    assert linear_decay(4, 4.0, 1.0, 5, 150) == 4.0
    assert math.isclose(linear_decay(5, 4.0, 1.0, 5, 150), 4.0 - 3.0 / 146)
    assert linear_decay(150, 4.0, 1.0, 5, 150) == 1.0
