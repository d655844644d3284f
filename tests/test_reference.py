"""The reference ops: gradients (gradcheck in float64), semantics, and every bad input's error."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from fitnets_fast import ops, reference

D = torch.float64


def _r(*shape, grad=True):
    return torch.randn(*shape, dtype=D, requires_grad=grad)


# ------------------------------------------------------------------------------------------ gradcheck
def test_maxout_gradcheck():
    x = _r(3, 6, 5, 7)
    assert torch.autograd.gradcheck(lambda x: reference.maxout(x, 3), (x,))


def test_maxout_conv2d_pool_is_maxout_then_ceil_mode_max_pool():
    x, w, b = torch.randn(2, 3, 9, 9, dtype=torch.float64), torch.randn(8, 3, 3, 3, dtype=torch.float64), None
    got = reference.maxout_conv2d(x, w, b, 2, 1, 0, (3, 2))
    want = F.max_pool2d(reference.maxout_conv2d(x, w, b, 2, 1, 0), 3, 2, ceil_mode=True)
    assert got.shape == (2, 4, 3, 3) and torch.equal(got, want)


def test_maxout_conv2d_gradcheck():
    x, w, b = _r(2, 3, 7, 6), _r(10, 3, 3, 3), _r(10)
    assert torch.autograd.gradcheck(lambda x, w, b: reference.maxout_conv2d(x, w, b, 2, 2, 1), (x, w, b))


def test_maxout_linear_gradcheck():
    x, w, b = _r(4, 7), _r(15, 7), _r(15)
    assert torch.autograd.gradcheck(lambda x, w, b: reference.maxout_linear(x, w, b, 5), (x, w, b))


@pytest.mark.parametrize("pieces,padding", [(2, 0), (1, 1)])
def test_hint_loss_gradcheck(pieces, padding):
    g, w, b = _r(3, 4, 6, 5), _r(3 * pieces, 4, 2, 2), _r(3 * pieces)
    h = _r(3, 3, 5 + 2 * padding, 4 + 2 * padding)
    f = lambda g, h, w, b: reference.hint_loss(g, h, w, b, pieces, padding)  # noqa: E731
    assert torch.autograd.gradcheck(f, (g, h, w, b))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_kd_loss_gradcheck(reduction):
    s, t = _r(5, 7), _r(5, 7)
    y = torch.tensor([0, 6, -100, 3, 2])
    f = lambda s, t: reference.kd_loss(s, t, y, 2.5, 1.5, 1.0, 2.0, reduction)  # noqa: E731
    assert torch.autograd.gradcheck(f, (s, t))


# ---------------------------------------------------------------------------------------- semantics
def test_maxout_groups_consecutive_channels():
    x = torch.arange(2 * 6 * 2, dtype=D).reshape(2, 6, 2).flip(-1)
    x[:, 1] += 100  # channel 1 wins group 0 (channels 0-2)
    y = reference.maxout(x, 3)
    assert y.shape == (2, 2, 2)
    assert torch.equal(y[:, 0], x[:, 1]) and torch.equal(y[:, 1], x[:, 3:6].amax(1))


def test_maxout_tie_goes_to_lowest_piece():
    x = torch.zeros(2, 4, 3, dtype=D, requires_grad=True)
    reference.maxout(x, 2).backward(torch.ones(2, 2, 3, dtype=D))
    assert torch.equal(x.grad[:, 0::2], torch.ones(2, 2, 3, dtype=D))
    assert torch.equal(x.grad[:, 1::2], torch.zeros(2, 2, 3, dtype=D))


def test_maxout_propagates_nan():
    x = torch.tensor([[1.0, float("nan"), 2.0, 3.0]])
    y = reference.maxout(x, 2)
    assert torch.isnan(y[0, 0]) and y[0, 1] == 3.0


def test_hint_loss_is_half_sum_over_units_mean_over_batch():
    g, w, b = torch.randn(4, 3, 5, 5, dtype=D), torch.randn(8, 3, 2, 2, dtype=D), torch.randn(8, dtype=D)
    h = torch.randn(4, 4, 4, 4, dtype=D)
    r = F.conv2d(g, w, b).view(4, 4, 2, 4, 4).amax(2)
    expected = sum(0.5 * ((h[i] - r[i]) ** 2).sum() for i in range(4)) / 4
    assert torch.allclose(reference.hint_loss(g, h, w, b, 2), expected)


def _kd_composed(s, t, y, T, lam, Ts, scale, reduction, ignore_index):
    """An independent composition of F.cross_entropy and F.log_softmax."""
    Ts = T if Ts is None else Ts
    soft_rows = -(F.softmax(t / T, 1) * F.log_softmax(s / Ts, 1)).sum(1)
    if reduction == "none":
        return F.cross_entropy(s, y, ignore_index=ignore_index, reduction="none") + lam * scale * soft_rows
    if reduction == "sum":
        return F.cross_entropy(s, y, ignore_index=ignore_index, reduction="sum") + lam * scale * soft_rows.sum()
    hard = F.cross_entropy(s, y, ignore_index=ignore_index) if (y != ignore_index).any() else 0.0
    return hard + lam * scale * soft_rows.mean()


@pytest.mark.parametrize(
    "T,Ts,scale,reduction,ignore",
    list(itertools.product([3.0, 1.5], [None, 1.0], [1.0, 9.0], ["mean", "sum", "none"], [False, True])),
)
def test_kd_loss_matches_composition(T, Ts, scale, reduction, ignore):
    s, t = torch.randn(9, 13, dtype=D), torch.randn(9, 13, dtype=D) * 3
    y = torch.randint(0, 13, (9,))
    if ignore:
        y[::3] = -1
    got = reference.kd_loss(s, t, y, T, 2.5, Ts, scale, reduction, ignore_index=-1)
    assert torch.allclose(got, _kd_composed(s, t, y, T, 2.5, Ts, scale, reduction, -1))


def test_kd_loss_all_rows_ignored_keeps_soft_term():
    s, t, y = torch.randn(3, 4, dtype=D), torch.randn(3, 4, dtype=D), torch.full((3,), -100)
    got = reference.kd_loss(s, t, y)
    assert torch.allclose(got, _kd_composed(s, t, y, 3.0, 4.0, None, 1.0, "mean", -100))


def test_kd_loss_paper_defaults():
    s, t, y = torch.randn(4, 10, dtype=D), torch.randn(4, 10, dtype=D), torch.randint(0, 10, (4,))
    expected = F.cross_entropy(s, y) + 4.0 * -(F.softmax(t / 3, 1) * F.log_softmax(s / 3, 1)).sum(1).mean()
    assert torch.allclose(reference.kd_loss(s, t, y), expected)


# ------------------------------------------------------------------------------------- bad inputs
BAD = [
    (lambda m: m.maxout(torch.randn(2, 5, 3), 2), ValueError, "not divisible by pieces"),
    (lambda m: m.maxout(torch.randn(5), 1), ValueError, "at least 2 dims"),
    (lambda m: m.maxout(torch.ones(2, 4, dtype=torch.int64), 2), TypeError, "floating-point"),
    (lambda m: m.maxout([1.0, 2.0], 2), TypeError, "torch.Tensor"),
    (lambda m: m.maxout(torch.randn(2, 4), 0), ValueError, "pieces must be a positive int"),
    (lambda m: m.maxout_conv2d(torch.randn(2, 3, 5), torch.randn(4, 3, 3, 3), None, 2), ValueError, "x must be 4-D"),
    (lambda m: m.maxout_conv2d(torch.randn(2, 3, 5, 5), torch.randn(5, 3, 3, 3), None, 2), ValueError, "not divisible"),
    (lambda m: m.maxout_conv2d(torch.randn(2, 4, 5, 5), torch.randn(4, 3, 3, 3), None, 2), ValueError, "input channels"),
    (lambda m: m.maxout_conv2d(torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(3), 2), ValueError, "bias"),
    (lambda m: m.maxout_conv2d(torch.randn(2, 3, 2, 2), torch.randn(4, 3, 3, 3), None, 2), ValueError, "smaller than the kernel"),
    (lambda m: m.maxout_conv2d(torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3).double(), None, 2), TypeError, "dtype"),
    (lambda m: m.maxout_conv2d(torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3), None, 2, 1, 0, (4, 2)), ValueError,
     "pool size 4 is larger than the 3x3"),
    (lambda m: m.maxout_conv2d(torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3), None, 2, 1, 1, (2, 0)), ValueError,
     "pool stride must be a positive int"),
    (lambda m: m.maxout_conv2d(torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3), None, 2, 1, 1, 2), ValueError,
     r"pool must be None or a \(size, stride\) pair"),
    (lambda m: m.maxout_linear(torch.randn(2, 3), torch.randn(6, 4), None, 2), ValueError, "features"),
    (lambda m: m.maxout_linear(torch.randn(2, 3, 1), torch.randn(6, 3), None, 2), ValueError, "x must be 2-D"),
    (lambda m: m.hint_loss(torch.randn(2, 3, 5, 5), torch.randn(3, 4, 4, 4), torch.randn(8, 3, 2, 2), None, 2),
     ValueError, "batch size mismatch"),
    (lambda m: m.hint_loss(torch.randn(2, 3, 5, 5), torch.randn(2, 4, 5, 5), torch.randn(8, 3, 2, 2), None, 2),
     ValueError, "hint has"),
    (lambda m: m.kd_loss(torch.randn(3, 4), torch.randn(3, 5), torch.zeros(3, dtype=torch.long)), ValueError, "must equal"),
    (lambda m: m.kd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.zeros(2, dtype=torch.long)), ValueError, "batch size mismatch"),
    (lambda m: m.kd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 4, 1])), ValueError, r"\[0, 4\)"),
    (lambda m: m.kd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, -2, 1])), ValueError, "ignore_index"),
    (lambda m: m.kd_loss(torch.ones(3, 4, dtype=torch.long), torch.randn(3, 4), torch.zeros(3, dtype=torch.long)),
     TypeError, "student_logits must be a floating-point"),
    (lambda m: m.kd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.zeros(3)), TypeError, "integer"),
    (lambda m: m.kd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.zeros(3, dtype=torch.long), temperature=0),
     ValueError, "temperature"),
    (lambda m: m.kd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.zeros(3, dtype=torch.long), reduction="avg"),
     ValueError, "reduction"),
    (lambda m: m.kd_loss(torch.randn(3, 4), torch.randn(3, 4, device="meta"), torch.zeros(3, dtype=torch.long)),
     ValueError, "share one device"),
]


@pytest.mark.parametrize("module", [reference, ops], ids=["reference", "ops"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_raises_clear_error(module, case):
    call, error, message = BAD[case]
    with pytest.raises(error, match=message):
        call(module)


def test_unknown_or_unavailable_backend_is_an_error():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.maxout(x, 2, backend="cuda")
    assert torch.equal(ops.maxout(x, 2, backend="reference"), reference.maxout(x, 2))
