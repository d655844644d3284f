"""``fitnets_fast.set_checks``: debug checks that name a non-finite input (off by default), and the KD label
range check, which runs on CPU tensors always but elsewhere (a device-to-host sync) only under the checks."""
import pytest
import torch

import fitnets_fast
from fitnets_fast import _checks, ops


@pytest.fixture
def checks_on():
    fitnets_fast.set_checks(True)
    yield
    fitnets_fast.set_checks(False)


def test_off_by_default_nan_passes_through():
    assert not _checks.checks_enabled()
    t = torch.randn(4, 5)
    t[0, 1] = float("nan")
    assert torch.isnan(ops.kd_loss(torch.randn(4, 5), t, torch.tensor([0, 1, 2, 3])))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_on_names_the_non_finite_input(checks_on, backend):
    if backend == "cpp":
        pytest.importorskip("fitnets_fast._C")
    t = torch.randn(4, 5)
    t[0, 1], t[2, 2], t[3, 0] = float("nan"), float("inf"), -float("inf")
    with pytest.raises(ValueError, match="kd_loss: teacher_logits has 3 NaN/inf values"):
        ops.kd_loss(torch.randn(4, 5), t, torch.tensor([0, 1, 2, 3]), backend=backend)
    w = torch.randn(6, 3, 2, 2)
    w[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="maxout_conv2d: weight has 1 NaN/inf values"):
        ops.maxout_conv2d(torch.randn(2, 3, 5, 5), w, None, 2, backend=backend)
    h = torch.full((2, 3, 4, 4), float("inf"))
    with pytest.raises(ValueError, match="hint_loss: hint has 96 NaN/inf values"):
        ops.hint_loss(torch.randn(2, 3, 5, 5), h, torch.randn(6, 3, 2, 2), None, 2, backend=backend)
    with pytest.raises(ValueError, match="maxout: x has 1 NaN/inf values"):
        ops.maxout(torch.tensor([[1.0, float("nan")]]), 2, backend=backend)


def test_set_checks_takes_a_bool():
    with pytest.raises(TypeError, match="True or False"):
        fitnets_fast.set_checks("yes")
    assert "set_checks" in fitnets_fast.__all__


def test_label_range_is_checked_on_cpu_always():
    with pytest.raises(ValueError, match=r"target values must be in \[0, 5\)"):
        ops.kd_loss(torch.randn(2, 5), torch.randn(2, 5), torch.tensor([0, 5]))


def test_label_range_off_cpu_waits_for_the_checks():
    """A label tensor on another device (meta here: any read of its values would fail) is not read unless
    the debug checks are on or a once-per-data-set caller asks (``always=True``)."""
    target = torch.zeros(3, dtype=torch.long, device="meta")
    _checks.labels(target, 5)  # no value read
    fitnets_fast.set_checks(True)
    try:
        with pytest.raises((RuntimeError, NotImplementedError)):
            _checks.labels(target, 5)
    finally:
        fitnets_fast.set_checks(False)
    with pytest.raises((RuntimeError, NotImplementedError)):
        _checks.labels(target, 5, always=True)
