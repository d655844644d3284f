"""``hint_loss`` on every backend against the float64 reference: each activation, forward and every gradient,
outputs poisoned (``check_against_reference``), sizes that are not powers of two; NaN/inf, and an empty
batch (a clear error)."""
import pytest
import torch

from fitnets_fast import ops, reference
from fitnets_fast.testing import check_against_reference

from _backends import ALL_PARAMS, FUSED_PARAMS, INF, NAN, check, impl, randn

DTYPES = [torch.float64, torch.float32]
NAMES = ["d/dguided", "d/dhint", "d/dweight", "d/dbias"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation,padding", [("relu", 0), ("relu", 1), ("none", 1)])
@pytest.mark.parametrize("backend", FUSED_PARAMS)
def test_activation(backend, activation, padding, dtype):
    guided, w, b = randn(backend, 3, 5, 7, 6), randn(backend, 5, 5, 2, 3), randn(backend, 5)
    hint = randn(backend, 3, 5, 6 + 2 * padding, 4 + 2 * padding)
    check_against_reference(lambda *t: impl(backend, "hint_loss")(*t, 1, padding, activation),
                            lambda *t: reference.hint_loss_impl(*t, 1, padding, activation),
                            [guided, hint, w, b], dtype, names=NAMES)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", FUSED_PARAMS)
def test_relu_ties_at_zero_get_no_gradient(backend, dtype):
    """Pre-activations exactly 0 (a zero weight row and bias, and a zero patch of guided): ReLU's gradient
    there is 0, as torch.relu's, and the hint still gets -(hint - 0) / N."""
    guided, w, b = randn(backend, 2, 3, 7, 5), randn(backend, 4, 3, 3, 3), randn(backend, 4)
    w[1], b[1] = 0.0, 0.0  # channel 1: exactly 0 everywhere
    guided[:, :, :4, :4] = 0.0
    b[2] = 0.0  # channel 2: exactly 0 over the zero patch
    hint = randn(backend, 2, 4, 5, 3)
    check_against_reference(lambda *t: impl(backend, "hint_loss")(*t, 1, 0, "relu"),
                            lambda *t: reference.hint_loss_impl(*t, 1, 0, "relu"),
                            [guided, hint, w, b], dtype, names=NAMES)
    w_ = w.clone().requires_grad_(True)
    b_ = b.clone().requires_grad_(True)
    impl(backend, "hint_loss")(guided, hint, w_, b_, 1, 0, "relu").backward()
    assert torch.all(w_.grad[1] == 0) and b_.grad[1] == 0


@pytest.mark.parametrize("backend", FUSED_PARAMS)
def test_public_op_and_module_take_the_activation(backend):
    from fitnets_fast.nn import HintLoss

    guided, hint = randn(backend, 2, 3, 6, 6), randn(backend, 2, 4, 5, 5)
    module = HintLoss(3, 4, 2, activation="relu", backend=backend).to(device=guided.device, dtype=torch.float64)
    expected = reference.hint_loss(guided, hint, module.weight, module.bias, activation="relu")
    torch.testing.assert_close(module(guided, hint), expected)
    torch.testing.assert_close(0.5 * (hint - module.regress(guided)).square().sum() / 2, expected)
    assert module.pieces == 1 and "activation='relu'" in repr(module)
    got = ops.hint_loss(guided, hint, module.weight, module.bias, None, 0, activation="relu", backend=backend)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("call,message", [
    (lambda g, h, w: ops.hint_loss(g, h, w, None), "needs pieces"),
    (lambda g, h, w: ops.hint_loss(g, h, w, None, 2, activation="relu"), "pieces=None or 1"),
    (lambda g, h, w: ops.hint_loss(g, h, w, None, 2, activation="none"), "pieces=None or 1"),
    (lambda g, h, w: ops.hint_loss(g, h, w, None, 1, activation="tanh"), "activation must be one of"),
    (lambda g, h, w: reference.hint_loss(g, h, w, None, 0), "pieces must be a positive int"),
])
def test_bad_activation_arguments(call, message):
    g, h, w = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 4, 4), torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match=message):
        call(g, h, w)


def test_module_validates_at_construction():
    from fitnets_fast.nn import HintLoss

    with pytest.raises(ValueError, match="pieces=None or 1"):
        HintLoss(3, 4, 2, pieces=2, activation="relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        HintLoss(3, 4, 2, activation="sigmoid")
    assert HintLoss(3, 4, 2).pieces == 2 and HintLoss(3, 4, 2, activation="none").pieces == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_nan_and_inf(backend, dtype):
    h = randn(backend, 2, 3, 4, 4)
    h[0, 1, 2, 2] = NAN
    check(backend, "hint_loss", [randn(backend, 2, 2, 4, 4), h, randn(backend, 6, 2, 1, 1), randn(backend, 6)],
          (2, 0), dtype, NAMES)
    g = randn(backend, 2, 2, 4, 4)
    g[1, 0, 0, 0] = INF
    check(backend, "hint_loss", [g, randn(backend, 2, 3, 4, 4), randn(backend, 6, 2, 1, 1), randn(backend, 6)],
          (2, 0), dtype, NAMES)


@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_empty_batch_is_an_error(backend):
    with pytest.raises(ValueError, match="hint_loss got an empty batch"):
        ops.hint_loss(randn(backend, 0, 2, 4, 4), randn(backend, 0, 3, 4, 4), randn(backend, 6, 2, 1, 1), None, 2,
                      backend=backend)
