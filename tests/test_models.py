"""fitnets_fast.models: every named network's shapes, hyperparameters, counts (the reference doc's recount
table) and regressors, and clear errors on bad input."""
import pytest
import torch

from fitnets_fast import models, resnet
from fitnets_fast.nn import HintLoss, MaxoutConv2d, MaxoutLinear

REQUIRED = (["teacher_cifar", "fitnet1", "fitnet2", "fitnet3", "fitnet4"]
            + [f"depth{d}_{b}" for b in ("30m", "107m") for d in (5, 7, 9, 11)]
            + ["teacher_mnist", "fitnet_mnist", "teacher_svhn", "fitnet_svhn", "teacher_digits", "fitnet_digits"])

# Recount table of the reference doc (§2.7, §2.3): exact weights, multiplications in millions (1 decimal).
COUNTS = {
    "fitnet1": (345_576, 30.2), "fitnet2": (1_053_928, 108.0), "fitnet3": (1_695_304, 324.1),
    "fitnet4": (2_736_712, 381.9), "teacher_cifar": (16_244_360, 732.3),
    "teacher_mnist": (360_816, 28.7), "teacher_mnist_code": (418_416, 30.7),
    "fitnet_mnist": (29_944, 5.3), "fitnet_mnist_code": (35_992, 5.6),
}
TABLE6_MULTS = {"30m": (27.3, 29.4, 30.0, 30.2), "107m": (101.8, 104.7, 106.5, 108.0)}

# (teacher, student, hint map, guided map, regressor kernel), as the reference doc derives (§1.2, §2.2).
PAIRS = [("teacher_cifar", s, (192, 7, 7), g, 2) for s, g in
         [("fitnet1", (32, 8, 8)), ("fitnet2", (80, 8, 8)), ("fitnet3", (80, 8, 8)), ("fitnet4", (80, 8, 8))]]
# Table 6's guided layers ("hint g <- 2"): the g-th conv, an 8x8 map (its channels read off the table).
PAIRS += [("teacher_cifar", name, (192, 7, 7), (c, 8, 8), 2) for name, c in
          [("depth5_30m", 64), ("depth7_30m", 64), ("depth9_30m", 32), ("depth11_30m", 48),
           ("depth5_107m", 128), ("depth7_107m", 80), ("depth9_107m", 80), ("depth11_107m", 96)]]
PAIRS += [("teacher_mnist", "fitnet_mnist", (48, 4, 4), (16, 4, 4), 1),
          ("teacher_mnist_code", "fitnet_mnist_code", (48, 4, 4), (16, 4, 4), 1),
          ("teacher_svhn", "fitnet_svhn", (128, 10, 10), (80, 16, 16), 7),
          ("teacher_svhn", "fitnet_svhn_fitnet4", (128, 10, 10), (80, 16, 16), 7),
          ("teacher_digits", "fitnet_digits", (32, 4, 4), (6, 4, 4), 1)]
MAXOUT = [n for n in models.names() if n not in resnet.names()]   # the ResNets are tested in test_resnet.py


def test_names_cover_the_issue():
    assert set(REQUIRED) <= set(models.names())
    assert len(set(models.names())) == len(models.names())


@pytest.mark.parametrize("name", MAXOUT)
def test_layer_shapes_and_forward_to(name):
    net = models.build(name, backend="reference").eval()
    x = torch.randn(2, *net.input_shape)
    middle = net.hint_layer if net.hint_layer is not None else net.guided_layer
    with torch.no_grad():
        h = x
        for i, layer in enumerate(net.layers):
            h = layer(h)
            assert tuple(h.shape) == (2,) + net.layer_output_shape(i), (name, net.layer_names[i])
            if i == middle:
                assert torch.equal(net.forward_to(x, i), h)
        assert torch.equal(net(x), h)
    assert len(net.layer_names) == len(net.layers)
    assert net.layer_names[-1] == "y" and isinstance(net.layers[-1], MaxoutLinear) and net.layers[-1].pieces == 1
    assert (net.hint_layer is None) != (net.guided_layer is None)        # a teacher or a student


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", MAXOUT)
def test_forward_batch2(name, num_classes):
    net = models.build(name, num_classes, backend="reference").eval()
    with torch.no_grad():
        logits = net(torch.randn(2, *net.input_shape))
    assert logits.shape == (2, num_classes) and torch.isfinite(logits).all()
    assert net.num_classes == num_classes and net.layer_output_shape(-1) == (num_classes,)


@pytest.mark.parametrize("teacher,student,hint,guided,kernel", PAIRS)
def test_default_hint_guided_shapes_and_regressor(teacher, student, hint, guided, kernel):
    t, s = models.build(teacher), models.build(student)
    assert t.layer_output_shape(t.hint_layer) == hint
    g = s.layer_output_shape(s.guided_layer)
    assert g == guided
    reg = models.build_regressor(hint, g, t.layers[t.hint_layer].pieces)
    assert isinstance(reg, HintLoss) and reg.kernel_size == kernel
    assert (reg.in_channels, reg.out_features, reg.pieces) == (g[0], hint[0], 2)


@pytest.mark.parametrize("teacher,student", [("teacher_cifar", "fitnet4"), ("teacher_mnist", "fitnet_mnist"),
                                             ("teacher_svhn", "fitnet_svhn"), ("teacher_digits", "fitnet_digits")])
def test_regressor_trains_on_real_outputs(teacher, student):
    t, s = models.build(teacher, backend="reference"), models.build(student, backend="reference")
    reg = models.build_regressor(t.layer_output_shape(t.hint_layer), s.layer_output_shape(s.guided_layer))
    x = torch.randn(2, *t.input_shape)
    with torch.no_grad():
        target = t.eval().forward_to(x, t.hint_layer)
    out = s.forward_to(x, s.guided_layer)
    assert reg.regress(out).shape == target.shape
    loss = reg(out, target)
    loss.backward()
    assert loss.dim() == 0 and reg.weight.grad is not None and s.layers[0].weight.grad is not None
    assert s.layers[s.guided_layer + 1].weight.grad is None


def test_fitnet4_regressor_matches_the_doc():
    reg = models.build_regressor((192, 7, 7), (80, 8, 8), 2)
    assert models.count_params(reg) == 2 * 2 * 2 * 80 * 192 == 122_880
    assert models.count_mults(reg, (80, 8, 8)) == 122_880 * 7 * 7
    assert (reg.init_range, reg.max_norm) == (0.05, 0.9)
    assert reg.weight.abs().max() <= 0.05 and reg.weight.abs().max() > 0.04 and not reg.bias.any()


def test_paper_default_layers():
    assert models.build("teacher_cifar").hint_layer == 1
    expected = {"fitnet1": 5, "fitnet2": 5, "fitnet3": 7, "fitnet4": 10, "depth5_30m": 1, "depth7_107m": 3,
                "depth9_30m": 4, "depth11_107m": 6, "fitnet_mnist": 3}
    for name, guided in expected.items():
        assert models.build(name).guided_layer == guided, name
    net = models.build("fitnet4")
    assert net.layer_names == [f"h{i}" for i in range(17)] + ["fc", "y"]
    assert models.build("teacher_cifar").layer_names == ["h0", "h1", "h2", "fc", "y"]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_match_recount(name):
    params, mults = COUNTS[name]
    net = models.build(name)
    assert models.count_params(net) == params
    assert round(models.count_mults(net) / 1e6, 1) == mults
    assert models.count_mults(net, net.input_shape) == models.count_mults(net)


@pytest.mark.parametrize("budget", ["30m", "107m"])
def test_table6_mults(budget):
    got = [round(models.count_mults(models.build(f"depth{d}_{budget}")) / 1e6, 1) for d in (5, 7, 9, 11)]
    assert got == list(TABLE6_MULTS[budget])


def test_cifar100_adds_45000_softmax_weights():
    for name in ["fitnet1", "fitnet2", "fitnet3", "fitnet4"]:
        assert models.count_params(models.build(name, 100)) == COUNTS[name][0] + 45_000


def test_svhn_teacher_recount():
    net = models.build("teacher_svhn")
    assert round(models.count_params(net) / 1e6, 1) == 10.5               # doc D7
    assert net.layers[3].in_features == 128 * 6 * 6


def test_fitnet_hyperparameters():
    net = models.build("fitnet4")
    convs, (fc, y) = net.layers[:-2], net.layers[-2:]
    assert all(isinstance(c, MaxoutConv2d) and c.pieces == 2 and c.kernel_size == 3 and c.padding == 1
               for c in convs)
    assert {(c.init_range, c.lr_scale, c.max_norm) for c in convs} == {(0.005, 0.05, 0.9)}
    assert (fc.in_features, fc.out_features, fc.pieces, fc.max_norm, fc.lr_scale) == (128, 500, 5, 1.9, 1.0)
    assert (y.in_features, y.max_norm, y.lr_scale, y.init_range) == (500, 1.9365, 1.0, 0.005)
    assert [c.pool for c in convs if c.pool] == [(2, 2), (2, 2), (8, 1)]
    assert net.input_dropout == [0.0] * 19
    for layer in net.maxout_layers():
        assert layer.weight.abs().max() <= 0.005 and not layer.bias.any()


def test_teacher_cifar_follows_the_pylearn2_yaml():
    net = models.build("teacher_cifar")
    h0, h1, h2, fc, y = net.layers
    assert [(c.kernel_size, c.padding, c.out_features, c.pool, c.max_norm) for c in (h0, h1, h2)] == [
        (8, 4, 96, (4, 2), 0.9), (8, 3, 192, (4, 2), 1.9365), (5, 3, 192, (2, 2), 1.9365)]
    assert {c.lr_scale for c in (h0, h1, h2)} == {0.05} and (fc.lr_scale, y.lr_scale) == (1.0, 1.0)
    assert (fc.in_features, fc.out_features, fc.pieces, fc.max_norm, y.max_norm) == (4800, 500, 5, 1.9, 1.9365)
    assert {layer.init_range for layer in net.maxout_layers()} == {0.005}
    assert net.input_dropout == [0.2, 0.5, 0.5, 0.5, 0.5]
    assert net.input_dropout_scale == [1.0, 2.0, 2.0, 2.0, 2.0]
    assert net.layer_output_shape(2) == (192, 5, 5)


def test_mnist_variants_differ_only_in_pieces():
    paper, code = models.build("fitnet_mnist"), models.build("fitnet_mnist_code")
    assert [layer.pieces for layer in paper.layers] == [2] * 6 + [1]
    assert [layer.pieces for layer in code.layers] == [2] * 4 + [4, 4, 1]
    assert [layer.max_norm for layer in paper.layers] == [0.9, 0.9] + [1.9365] * 5
    assert {layer.lr_scale for layer in paper.layers} == {1.0}
    assert [layer.pieces for layer in models.build("teacher_mnist_code").layers] == [2, 2, 4, 1]


def test_teacher_dropout_in_training_only():
    net = models.build("teacher_mnist", backend="reference")
    assert net.input_dropout == [0.2, 0.5, 0.5, 0.5] and net.input_dropout_scale == [1.0, 2.0, 2.0, 2.0]
    seen = {}
    for i in (0, 1):
        net.layers[i].register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].detach()))
    x = torch.randn(16, *net.input_shape)
    net.train()
    net.forward_to(x, 1)
    h0_out = net.layers[0](seen[0])
    kept0, kept1 = seen[0] != 0, seen[1] != 0
    assert torch.equal(seen[0][kept0], x[kept0])                 # h0 input: masked, not rescaled (pylearn2)
    assert 0.17 < 1 - kept0.float().mean() < 0.23
    assert torch.equal(seen[1][kept1], 2 * h0_out[kept1])        # later inputs: drop 0.5, scale 2
    assert 0.45 < 1 - kept1.float().mean() < 0.55
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        assert torch.equal(seen[0], x)


def test_digits_models_are_small_and_paired():
    t, s = models.build("teacher_digits"), models.build("fitnet_digits")
    assert t.input_shape == s.input_shape == (1, 8, 8)
    assert models.count_params(s) < models.count_params(t) / 7                  # thin: 10.7K vs 85K
    assert len(s.layers) == 17 and len(t.layers) == 4 and s.guided_layer == 8    # deep, guided in the middle
    assert models.count_mults(s) < models.count_mults(t) < 500_000
    assert all(layer.init_range is None for layer in t.maxout_layers() + s.maxout_layers())
    assert s.layers[0].bias.any()                                # PyTorch's default init, not zeros


def test_auto_backend_matches_reference():
    net = models.build("fitnet_digits").eval()
    ref = models.build("fitnet_digits", backend="reference").eval()
    ref.load_state_dict(net.state_dict())
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():   # float32, 17 layers: a fused kernel may sum in another order than the reference
        torch.testing.assert_close(net(x), ref(x), rtol=1e-4, atol=1e-5)


def test_init_range_option():
    net = models.build("fitnet1", init_range=0.05)
    assert {layer.init_range for layer in net.maxout_layers()} == {0.05}
    assert models.build("fitnet1", init_range=None).layers[0].init_range is None
    assert all(hasattr(layer, "apply_max_norm") for layer in net.maxout_layers())


def test_max_norm_is_applied_per_filter():
    net = models.build("fitnet1", init_range=1.0)
    for layer in net.maxout_layers():
        layer.apply_max_norm()
        norms = layer.weight.flatten(1).norm(dim=1)
        assert norms.max() <= layer.max_norm * (1 + 1e-6)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model name 'fitnet5'.*teacher_cifar.*fitnet_digits"):
        models.build("fitnet5")
    with pytest.raises(ValueError, match="unknown model name"):
        models.build(None)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.0, True, "10"])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        models.build("fitnet1", bad)


def test_bad_options_and_inputs():
    with pytest.raises(TypeError, match="unknown option.*'pieces'.*valid options"):
        models.build("fitnet1", pieces=3)
    with pytest.raises(ValueError, match="backend"):
        models.build("fitnet1", backend="cuda")
    net = models.build("fitnet_digits")
    with pytest.raises(ValueError, match=r"x must be \(N, 1, 8, 8\)"):
        net(torch.randn(2, 1, 9, 9))
    with pytest.raises(ValueError, match="index must be an int"):
        net.forward_to(torch.randn(2, 1, 8, 8), len(net.layers))
    with pytest.raises(ValueError, match="index must be an int"):
        net.layer_output_shape(1.0)
    with torch.no_grad():
        assert torch.equal(net.forward_to(torch.ones(1, 1, 8, 8), "h3"), net.forward_to(torch.ones(1, 1, 8, 8), 3))
    assert net.layer_output_shape(-1) == net.layer_output_shape("y") == (10,)
    with pytest.raises(ValueError, match="or a layer name.*h0, h1.*fc, y"):
        net.layer_output_shape("h99")
    with pytest.raises(TypeError, match="spec must be an Arch"):
        models.MaxoutNet("fitnet1")


def test_regressor_errors():
    with pytest.raises(ValueError, match="teacher hint map 10x10 is larger than the student guided map 8x8"):
        models.build_regressor((128, 10, 10), (80, 8, 8))
    with pytest.raises(ValueError, match="larger than the student guided map"):
        models.build_regressor((192, 7, 9), (80, 8, 8))
    with pytest.raises(ValueError, match="square kernels only"):
        models.build_regressor((192, 7, 6), (80, 8, 8))
    with pytest.raises(ValueError, match=r"teacher_hint_shape must be a \(C, H, W\) tuple"):
        models.build_regressor((192, 7), (80, 8, 8))
    with pytest.raises(ValueError, match="student_guided_shape"):
        models.build_regressor((192, 7, 7), (80, 0, 8))
    with pytest.raises(ValueError, match="pieces"):
        models.build_regressor((192, 7, 7), (80, 8, 8), 0)


def test_count_errors():
    with pytest.raises(TypeError, match="MaxoutNet or a MaxoutConv2d"):
        models.count_mults(torch.nn.Linear(3, 4), (3, 1, 1))
    with pytest.raises(TypeError, match="nn.Module"):
        models.count_params("fitnet1")
    with pytest.raises(ValueError, match="input_shape"):
        models.count_mults(models.build_regressor((192, 7, 7), (80, 8, 8)))
    with pytest.raises(ValueError, match=r"expects a \(3, H, W\) input"):
        models.count_mults(models.build("fitnet1"), (1, 32, 32))
    with pytest.raises(ValueError, match="MaxoutLinear expects 64 input features"):
        models.count_mults(models.build("fitnet1"), (3, 40, 40))


@pytest.mark.parametrize("size,kernel,pad,pool", [(5, 1, 0, (1, 3)), (7, 3, 1, (3, 2)), (9, 2, 0, (3, 3)),
                                                  (6, 3, 2, (4, 1)), (33, 8, 4, (4, 2))])
def test_custom_arch_geometry_matches_forward(size, kernel, pad, pool):
    spec = models.Arch((2, size, size), (models.Conv(3, kernel, pad, pool=pool), models.Dense(4, 2)))
    net = models.MaxoutNet(spec, 3, backend="reference")
    out = net.layers[0](torch.randn(1, 2, size, size))
    assert (1,) + net.layer_output_shape(0) == tuple(out.shape)
    det = size + 2 * pad - kernel + 1
    assert models.count_mults(net) == 3 * 2 * 2 * kernel ** 2 * det ** 2 + net.layers[1].weight.numel() + 4 * 3
    assert net(torch.randn(2, 2, size, size)).shape == (2, 3)
