"""``kd_loss``'s contract on every backend: NaN/inf logits propagate as in the reference, an empty batch
and non-finite hyperparameters are clear errors, outputs fully written (poisoned first)."""
import pytest
import torch

from fitnets_fast import ops

from _backends import ALL_PARAMS, DEVICES, INF, NAN, check, randn

DTYPES = [torch.float64, torch.float32]
NAMES = ["d/dstudent", "d/dteacher"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_nan_and_inf(backend, dtype):
    s, t = randn(backend, 4, 6), randn(backend, 4, 6)
    s[1, 2] = NAN
    t[2, 4] = NAN
    s[3, 0] = -INF  # a masked class
    y = torch.tensor([0, 1, 2, 3], device=DEVICES[backend])
    for reduction in ["none", "mean"]:
        check(backend, "kd_loss", [s, t], (y, 3.0, 4.0, None, 1.0, reduction), dtype, NAMES)


@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_empty_batch_is_an_error(backend):
    y = torch.zeros(0, dtype=torch.long, device=DEVICES[backend])
    with pytest.raises(ValueError, match="kd_loss got an empty batch"):
        ops.kd_loss(randn(backend, 0, 5), randn(backend, 0, 5), y, backend=backend)


@pytest.mark.parametrize("name,value", [("lam", float("nan")), ("lam", INF), ("temperature", INF),
                                        ("temperature", NAN), ("student_temperature", INF), ("soft_scale", NAN),
                                        ("soft_scale", INF), ("lam", -1.0)])
def test_non_finite_hyperparameters_raise(name, value):
    s, t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=f"{name} must be a (positive|non-negative) finite number"):
        ops.kd_loss(s, t, y, **{name: value})
    from fitnets_fast.nn import KDLoss

    with pytest.raises(ValueError, match=f"{name} must be"):
        KDLoss(**{name: value})
