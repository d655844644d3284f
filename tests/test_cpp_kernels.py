"""The "cpp" backend (fused C++ CPU kernels in fitnets_fast.cpp) against the float64 reference.

Every check goes through the public ops with ``backend="cpp"`` and ``fitnets_fast.testing``'s rule
(forward and every gradient, outputs poisoned), in float64 and float32, and for the maxout ops in bfloat16
(the dtype they get under ``torch.autocast("cpu")``).
"""
import math

import numpy as np
import pytest
import torch

from fitnets_fast import _backend, ops, reference
from fitnets_fast.testing import EPS_MARGIN, check_against_reference, offset_logits

pytestmark = pytest.mark.skipif(_backend.module("cpp") is None,
                                reason=f"C++ kernels not built: {_backend.unavailable_reason('cpp')}")

D = torch.float64
DTYPES = [torch.float64, torch.float32]
BF16 = torch.bfloat16
MAXOUT_DTYPES = DTYPES + [BF16]  # maxout alone only compares and copies: bfloat16 inputs give exact winners
BF16_MARGIN = 2
NAN, INF = float("nan"), float("inf")


def _r(*shape):
    return torch.randn(*shape, dtype=D)


def _check(op, args, dtype, names, view=lambda *a: a, allow_reference_error=True):
    """Compare ``ops.<op>(*view(*tensors), *rest)`` on the cpp backend with the reference op
    (``allow_reference_error``: see ``check_against_reference``)."""
    n = len(names)
    tensors, rest = args[:n], args[n:]

    def kernel(*ts):
        return getattr(ops, op)(*view(*ts), *rest, backend="cpp")

    def ref(*ts):
        return getattr(reference, op)(*view(*ts), *rest)

    # bfloat16's epsilon is 2**-7: the usual 16-epsilon margin would hide a rounding error there.
    margin = BF16_MARGIN if dtype == BF16 else EPS_MARGIN
    check_against_reference(kernel, ref, tensors, dtype, names=names, margin=margin,
                            allow_reference_error=allow_reference_error)


# --------------------------------------------------------------------------------------------- maxout
@pytest.mark.parametrize("dtype", MAXOUT_DTYPES)
@pytest.mark.parametrize("shape,pieces", [((3, 6, 5, 7), 3), ((2, 10, 9), 5), ((7, 8), 2), ((1, 4, 1, 1), 4),
                                          ((2, 2, 3, 5), 2), ((2, 3, 4, 3, 2), 3), ((3, 14, 7, 5), 7),
                                          ((2, 4, 13, 11), 2)])  # rows > 128 positions: the streaming path
def test_maxout(shape, pieces, dtype):
    _check("maxout", (_r(*shape), pieces), dtype, ["x"])


@pytest.mark.parametrize("dtype", MAXOUT_DTYPES)
@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last", "expanded"])
def test_maxout_non_contiguous(layout, dtype):
    views = {
        "transposed": (_r(3, 6, 7, 5), lambda x: (x.transpose(2, 3),)),
        "sliced": (_r(3, 12, 5, 9), lambda x: (x[:, ::2, :, 1::2],)),
        "channels_last": (_r(3, 6, 5, 7), lambda x: (x.contiguous(memory_format=torch.channels_last),)),
        "expanded": (_r(1, 6, 5, 1), lambda x: (x.expand(4, 6, 5, 3),)),
    }
    x, view = views[layout]
    _check("maxout", (x, 2), dtype, ["x"], view=view)


# -------------------------------------------------------------------------------------- maxout conv2d
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [
    dict(x=(3, 5, 9, 7), w=(12, 5, 3, 3), pieces=2, stride=1, padding=1, bias=True),
    dict(x=(2, 3, 11, 10), w=(15, 3, 4, 2), pieces=5, stride=2, padding=0, bias=True),
    dict(x=(2, 4, 6, 6), w=(9, 4, 3, 3), pieces=3, stride=1, padding=2, bias=False),
    dict(x=(2, 4, 6, 5), w=(6, 4, 1, 1), pieces=1, stride=1, padding=0, bias=True),
    dict(x=(3, 1, 7, 9), w=(10, 1, 3, 3), pieces=2, stride=1, padding=1, bias=True),  # one input channel
])
def test_maxout_conv2d(cfg, dtype):
    b = _r(cfg["w"][0]) if cfg["bias"] else None
    names = ["x", "weight"] + (["bias"] if cfg["bias"] else [])
    tensors = (_r(*cfg["x"]), _r(*cfg["w"])) + ((b,) if cfg["bias"] else ())

    def view(x, w, *bias):
        return (x, w, bias[0] if bias else None)

    _check("maxout_conv2d", tensors + (cfg["pieces"], cfg["stride"], cfg["padding"]), dtype, names, view=view)


# ------------------------------------------------------------------------------ maxout conv + max-pool
# Each pooling runs through the fused maxout + max-pool kernel unless its window x pieces overflow the
# one-byte index (the last case: 9 * 9 * 4 > 256), which pools the fused maxout output with PyTorch.
POOLED = [
    dict(x=(3, 5, 9, 7), w=(12, 5, 3, 3), pieces=2, padding=1, pool=(2, 2), bias=True),   # ceil: partial windows
    dict(x=(2, 3, 13, 12), w=(9, 3, 3, 3), pieces=3, padding=0, pool=(3, 2), bias=True),  # overlapping windows
    dict(x=(2, 4, 12, 11), w=(10, 4, 2, 2), pieces=5, padding=1, pool=(4, 2), bias=False),
    dict(x=(2, 3, 8, 8), w=(14, 3, 3, 3), pieces=7, padding=1, pool=(8, 1), bias=True),   # global pool, 7 pieces
    dict(x=(2, 2, 11, 11), w=(8, 2, 3, 3), pieces=4, padding=0, pool=(9, 1), bias=True),  # index would overflow
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", POOLED, ids=[str(c["pool"]) + f"x{c['pieces']}" for c in POOLED])
def test_maxout_conv2d_pooled(cfg, dtype):
    names = ["x", "weight"] + (["bias"] if cfg["bias"] else [])
    tensors = (_r(*cfg["x"]), _r(*cfg["w"])) + ((_r(cfg["w"][0]),) if cfg["bias"] else ())

    def view(x, w, *bias):
        return (x, w, bias[0] if bias else None)

    _check("maxout_conv2d", tensors + (cfg["pieces"], 1, cfg["padding"], cfg["pool"]), dtype, names, view=view)


@pytest.mark.parametrize("dtype", MAXOUT_DTYPES)
@pytest.mark.parametrize("channels", [8, 16, 32, 17])   # 8, 16, 32: the windows' compile-time widths
def test_maxout_conv2d_pooled_ties_and_nan_at_every_channel_width(channels, dtype):
    """Overlapping, partial (ceil-mode) windows over small integers (ties between pieces and window pixels)
    with NaN pixels, at the channel counts the kernel folds with fixed-width code and one it does not."""
    x = torch.randint(-2, 3, (2, 3, 11, 9)).to(D)
    w = torch.randint(-1, 2, (2 * channels, 3, 1, 1)).to(D)
    b = torch.randint(-1, 2, (2 * channels, 11, 9)).to(D)   # untied, as in the FitNets
    x[0, :, 4, 4] = NAN
    x[1, 0, 0, 0] = x[1, 0, 1, 1] = NAN

    def view(x, w, b):
        return x.contiguous(memory_format=torch.channels_last), w, b

    _check("maxout_conv2d", (x, w, b, 2, 1, 0, (4, 2)), dtype, ["x", "weight", "bias"], view=view)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxout_conv2d_pooled_channels_last(dtype):
    def view(x, w, b):
        return x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last), b

    _check("maxout_conv2d", (_r(3, 6, 10, 9), _r(16, 6, 3, 3), _r(16), 2, 1, 1, (2, 2)), dtype,
           ["x", "weight", "bias"], view=view)


def test_maxout_conv2d_pooled_saves_only_a_byte_per_pooled_output():
    x, w, b = _r(4, 3, 8, 8).requires_grad_(), _r(12, 3, 3, 3).requires_grad_(), _r(12).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ops.maxout_conv2d(x, w, b, 3, 1, 1, (2, 2), backend="cpp")
    shapes = sorted((tuple(t.shape), t.dtype) for t in saved)
    assert shapes == sorted([((4, 3, 8, 8), D), ((12, 3, 3, 3), D), ((4, 4, 4, 4), torch.uint8)]), shapes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels,pieces", [(4, 4), (3, 7), (601, 2)])  # 601: rows longer than a block
def test_maxout_conv2d_channels_last_and_strided(dtype, channels, pieces):
    def view(x, w, b):
        return x.contiguous(memory_format=torch.channels_last), w.transpose(2, 3), b[::2]

    _check("maxout_conv2d", (_r(3, 6, 8, 9), _r(channels * pieces, 6, 3, 3), _r(2 * channels * pieces), pieces, 1, 1),
           dtype, ["x", "weight", "bias"], view=view)


@pytest.mark.parametrize("pool", [None, (2, 2)])
def test_maxout_conv2d_one_input_channel_runs_channels_last(pool):
    """A one-channel input fits both layouts; the convolution must still take its channels-last path (its
    output, and so the op's, is channels-last), not oneDNN's NCHW path plus reorders and a copy."""
    x, w, b = _r(3, 1, 8, 8), _r(8, 1, 3, 3), _r(8)
    y = ops.maxout_conv2d(x, w, b, 2, 1, 1, pool, backend="cpp")
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    torch.testing.assert_close(y, reference.maxout_conv2d(x, w, b, 2, 1, 1, pool), rtol=0, atol=1e-12)


def test_maxout_conv2d_saves_only_input_weight_and_byte_index():
    x, w, b = _r(4, 3, 8, 8).requires_grad_(), _r(12, 3, 3, 3).requires_grad_(), _r(12).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ops.maxout_conv2d(x, w, b, 3, 1, 1, backend="cpp")
    shapes = sorted((tuple(t.shape), t.dtype) for t in saved)
    assert shapes == sorted([((4, 3, 8, 8), D), ((12, 3, 3, 3), D), ((4, 4, 8, 8), torch.uint8)]), shapes


# ------------------------------------------------------------- maxout conv2d / linear in bfloat16
# In bfloat16 a conv's rounding decides near-ties between pieces, so gradients on Gaussian data would
# test rounding luck. Small integers keep every conv / matmul output (and x + bias) exact in bfloat16:
# the winners, and so the routing of every gradient, are then the kernels' own.
def _small_ints(*shape):
    return torch.randint(-2, 3, shape).to(D)


@pytest.mark.parametrize("pool", [None, (2, 2), (3, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("untied", [False, True])    # untied: one bias per filter and location (12, 9, 8)
def test_maxout_conv2d_bfloat16(pool, channels_last, untied):
    def view(x, w, b):
        return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), w, b

    tensors = (_small_ints(3, 4, 9, 8), _small_ints(12, 4, 3, 3), _small_ints(12, 9, 8) if untied else _small_ints(12))
    _check("maxout_conv2d", tensors + (3, 1, 1, pool), BF16, ["x", "weight", "bias"], view=view)


@pytest.mark.parametrize("n,fin,fout,pieces", [(5, 7, 3, 5), (3, 5, 1031, 2), (0, 4, 3, 2)])
def test_maxout_linear_bfloat16(n, fin, fout, pieces):
    tensors = (_small_ints(n, fin), _small_ints(fout * pieces, fin), _small_ints(fout * pieces))
    _check("maxout_linear", tensors + (pieces,), BF16, ["x", "weight", "bias"])


@pytest.mark.parametrize("pool", [None, (2, 2), (3, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("untied", [False, True])
def test_maxout_conv2d_bfloat16_bias_add_rounds_like_pytorch(pool, channels_last, untied):
    """An identity 1x1 conv leaves x exact, so the outputs differ from PyTorch's only by how x + bias is
    rounded: once, to nearest even, like PyTorch's bias-carrying bfloat16 conv (the kernel rounds after the
    max, which gives the same values because rounding is monotonic). Compared bit for bit, NaN included."""
    x = torch.randn(3, 12, 9, 8).bfloat16()
    x[1, 4, 2, 3] = NAN
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.eye(12, dtype=BF16).view(12, 12, 1, 1)
    b = torch.randn(12, 9, 8).bfloat16() if untied else torch.randn(12).bfloat16()
    got = ops.maxout_conv2d(x, w, b, 3, pool=pool, backend="cpp")
    want = ops.maxout_conv2d(x, w, b, 3, pool=pool, backend="reference")
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_maxout_conv2d_under_autocast_runs_the_fused_kernel():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w, b = torch.randn(8, 3, 3, 3, requires_grad=True), torch.randn(8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        with torch.autocast("cpu", dtype=BF16):
            y = ops.maxout_conv2d(x, w, b, 2, 1, 1, (2, 2))
    assert y.dtype == BF16 and torch.uint8 in saved
    y.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32


# -------------------------------------------------------------------------------------- maxout linear
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,fin,fout,pieces,bias", [(5, 7, 3, 5, True), (9, 13, 11, 2, False), (1, 4, 6, 4, True),
                                                    (0, 4, 3, 2, True), (4, 5, 3, 1, True),
                                                    # rows longer than a kernel block (512 outputs), 7 pieces
                                                    (3, 5, 1031, 2, True), (6, 3, 37, 7, True),
                                                    # rows of whole vectors (a pass per row), partial last block
                                                    (37, 6, 32, 2, True)])
def test_maxout_linear(n, fin, fout, pieces, bias, dtype):
    tensors = (_r(n, fin), _r(fout * pieces, fin)) + ((_r(fout * pieces),) if bias else ())
    names = ["x", "weight"] + (["bias"] if bias else [])

    def view(x, w, *b):
        return (x, w, b[0] if b else None)

    _check("maxout_linear", tensors + (pieces,), dtype, names, view=view)


# ------------------------------------------------------------------------------------------ hint loss
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pieces,padding,kernel", [(2, 0, 3), (1, 1, 3), (3, 0, 1), (5, 1, 2)])
def test_hint_loss(pieces, padding, kernel, dtype):
    g = _r(3, 4, 7, 6)
    out_h, out_w = 7 + 2 * padding - kernel + 1, 6 + 2 * padding - kernel + 1
    _check("hint_loss", (g, _r(3, 5, out_h, out_w), _r(5 * pieces, 4, kernel, kernel), _r(5 * pieces), pieces,
                         padding), dtype, ["guided", "hint", "weight", "bias"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_hint_loss_channels_last_no_bias(dtype):
    def view(g, h, w):
        return g.contiguous(memory_format=torch.channels_last), h.transpose(2, 3), w, None

    _check("hint_loss", (_r(2, 3, 6, 6), _r(2, 4, 4, 4), _r(8, 3, 3, 3), 2, 0), dtype, ["guided", "hint", "weight"],
           view=view)


# -------------------------------------------------------------------------------------------- KD loss
KD_NAMES = ["student_logits", "teacher_logits"]


# Rows of thousands of classes: the float64 reference's own teacher gradient is off by up to ~20 eps there
# (softmax-backward cancellation), so float64 is checked against extended precision instead (below).
KD_SIZES = [(5, 7, DTYPES), (3, 2, DTYPES), (4, 5003, [torch.float32])]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n,k,dtype", [(n, k, d) for n, k, ds in KD_SIZES for d in ds])
def test_kd_loss(n, k, reduction, dtype):
    y = torch.randint(0, k, (n,))
    y[1] = -100
    _check("kd_loss", (_r(n, k) * 3, _r(n, k) * 3, y, 2.5, 1.5, None, 2.0, reduction), dtype, KD_NAMES)
    _check("kd_loss", (_r(n, k), _r(n, k), y, 3.0, 4.0, 1.0, 1.0, reduction), dtype, KD_NAMES)


@pytest.mark.parametrize("student_temperature", [2.0, 4.0, 1.5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kd_loss_student_temperatures(student_temperature, dtype):
    """Integer student temperatures take the kernel's shared-exponential path (exp(s-m) as a power of
    exp((s-m)/T_s)); other values the general one."""
    y = torch.tensor([0, 6, 3, -100, 2])
    for reduction in ["mean", "none"]:
        _check("kd_loss", (_r(5, 7) * 4, _r(5, 7) * 4, y, 3.0, 4.0, student_temperature, 1.0, reduction), dtype,
               KD_NAMES)


def test_kd_loss_largest_class_count():
    """The issue's upper end, 256K classes (here 2^18 - 3: not a whole number of blocks)."""
    k = (1 << 18) - 3
    y = torch.tensor([0, k - 1, -100])
    _check("kd_loss", (_r(3, k) * 3, _r(3, k) * 3, y, 3.0, 4.0, None, 1.0, "mean"), torch.float32, KD_NAMES)


def _rising_rows(k):
    """Rows whose student max rises block after block (teacher's falls): every block rescales the sums."""
    s = torch.linspace(-30, 30, k, dtype=D).repeat(3, 1) + 0.1 * _r(3, k)
    t = torch.linspace(25, -25, k, dtype=D).repeat(3, 1) + 0.1 * _r(3, k)
    return s, t, torch.tensor([0, k - 1, k // 2])


def test_kd_loss_online_softmax_rescales_across_blocks():
    s, t, y = _rising_rows(9000)
    _check("kd_loss", (s, t, y, 3.0, 4.0, None, 1.0, "mean"), torch.float32, KD_NAMES)


def _kd_extended(s, t, y, temperature, weight, reduction):
    """KD loss and its gradients in numpy extended precision (x87 long double), ignore_index -100."""
    ld = np.longdouble
    s, t = s.numpy().astype(ld), t.numpy().astype(ld)
    y = y.numpy()

    def log_softmax(x):
        m = x.max(1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(1, keepdims=True))

    rows = np.arange(len(y))
    labelled = y != -100
    lsm1, lsm_s, p = log_softmax(s), log_softmax(s / ld(temperature)), np.exp(log_softmax(t / ld(temperature)))
    hard = np.where(labelled, -lsm1[rows, np.where(labelled, y, 0)], 0)
    soft = -(p * lsm_s).sum(1)
    hard_scale = 1 / ld(max(labelled.sum(), 1)) if reduction == "mean" else ld(1)
    soft_scale = ld(weight) / (len(y) if reduction == "mean" else 1)
    onehot = np.zeros_like(s)
    onehot[rows[labelled], y[labelled]] = 1
    grad_s = hard_scale * labelled[:, None] * (np.exp(lsm1) - onehot) + soft_scale / ld(temperature) * (
        np.exp(lsm_s) - p)
    grad_t = -soft_scale / ld(temperature) * p * (lsm_s + soft[:, None])
    loss = (hard * hard_scale).sum() + (soft * soft_scale).sum()
    return loss, grad_s, grad_t


@pytest.mark.parametrize("rows", ["random", "rising"])
def test_kd_loss_float64_long_rows_against_extended_precision(rows):
    s, t, y = (_r(4, 5003) * 3, _r(4, 5003) * 3, torch.tensor([0, 7, -100, 5002])) if rows == "random" \
        else _rising_rows(9000)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = ops.kd_loss(s, t, y, 2.5, 1.5, None, 2.0, "sum", backend="cpp")
    got = [loss.detach()] + list(torch.autograd.grad(loss, [s, t]))
    truth = _kd_extended(s.detach(), t.detach(), y, 2.5, 3.0, "sum")
    for label, k, e in zip(["loss", "student_logits", "teacher_logits"], got, truth):
        k = k.numpy().astype(np.longdouble)
        err = float(np.abs(k - e).max() / np.abs(e).max())
        assert err <= 16 * torch.finfo(D).eps, f"{label}: relative error {err:.2e}"


@pytest.mark.parametrize("student_temperature", [None, 1.0])
@pytest.mark.parametrize("k", [7, 2500])
def test_kd_loss_offset_logits_lose_no_accuracy(k, student_temperature):
    """Logits with a large common offset: the float32 reference loses digits in x / T before it subtracts the
    maximum (its error here reaches ~100 eps); the kernel subtracts first, so it must be within the margin
    of the float64 result by itself."""
    y = torch.tensor([0, 3, -100, 6, 1])
    _check("kd_loss", (offset_logits(5, k), offset_logits(5, k), y, 3.0, 4.0, student_temperature, 1.0, "mean"),
           torch.float32, KD_NAMES, allow_reference_error=False)


def _kd_teacher_grad_pairwise(s, t, temperature, weight):
    """dL/dt of the KD loss (T_s = T, reduction "sum") in extended precision, written as
    ``-weight / T^2 * p_j * sum_l p_l (s_j - s_l)``, p = softmax(t / T): no log-sum is subtracted, so it stays
    accurate where p is nearly one-hot (where ``p * (log_softmax + soft)`` cancels to rounding noise)."""
    ld = np.longdouble
    s, t = s.numpy().astype(ld), t.numpy().astype(ld)
    z = t / ld(temperature)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pairwise = np.stack([(p[i] * (s[i][:, None] - s[i][None, :])).sum(1) for i in range(len(s))])
    return -ld(weight) / ld(temperature) ** 2 * p * pairwise


@pytest.mark.parametrize("student_grad", [True, False], ids=["with_student_grad", "teacher_only"])
@pytest.mark.parametrize("k", [7, 2500])
def test_kd_loss_teacher_gradient_of_a_sharp_teacher(k, student_grad):
    """A teacher whose logits are far apart puts nearly all its probability on one class, where dL/dt is a
    small sum of small terms. float32, against extended precision: the kernel must keep its relative
    accuracy there (it centres the student logits on that class). With 2500 classes the largest teacher
    logit lies in the second block of 2048 in some rows (the online path moves the centre there)."""
    torch.manual_seed(7)
    s, t = torch.randn(4, k) * 30, torch.randn(4, k) * 30
    t[0, k - 3], t[1, 1] = t[0].max() + 25, t[1].max() + 25  # p of the runner-up < e^-25, still a normal float
    y = torch.tensor([0, 1, -100, 2])
    s.requires_grad_(student_grad)
    t.requires_grad_(True)
    loss = ops.kd_loss(s, t, y, 1.0, 2.0, None, 1.0, "sum", backend="cpp")
    (got,) = torch.autograd.grad(loss, [t])
    truth = _kd_teacher_grad_pairwise(s.detach(), t.detach(), 1.0, 2.0)
    for row in range(4):
        err = np.abs(got[row].numpy().astype(np.longdouble) - truth[row]).max() / np.abs(truth[row]).max()
        assert err <= 16 * torch.finfo(torch.float32).eps, f"row {row}: relative error {float(err):.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_kd_loss_non_contiguous(dtype):
    """A transposed student, a column-sliced teacher and strided labels give the contiguous inputs' results."""
    y = torch.tensor([4, 0, 8, 2, 1, 3, 5, 7, 6, 0])[::2]
    _check("kd_loss", (_r(9, 5), _r(5, 18), y, 3.0, 4.0, None, 1.0, "none"), dtype, KD_NAMES,
           view=lambda s, t: (s.t(), t[:, ::2]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kd_loss_ignore_index_and_target_dtypes(dtype):
    y = torch.full((4,), 7, dtype=torch.int32)  # every row ignored: no hard term, soft term over all rows
    _check("kd_loss", (_r(4, 9), _r(4, 9), y, 3.0, 2.0, None, 1.0, "mean", 7), dtype, KD_NAMES)
    y8 = torch.tensor([1, 0, 8, 3], dtype=torch.uint8)
    _check("kd_loss", (_r(4, 9), _r(4, 9), y8, 3.0, 2.0, None, 1.0, "sum", 8), dtype, KD_NAMES)


def test_kd_loss_student_only_gradient():
    s, t = _r(3, 5).requires_grad_(), _r(3, 5)
    loss = ops.kd_loss(s, t, torch.tensor([0, 1, 2]), backend="cpp")
    (g,) = torch.autograd.grad(loss, s)
    (g_ref,) = torch.autograd.grad(reference.kd_loss(s, t, torch.tensor([0, 1, 2])), s)
    torch.testing.assert_close(g, g_ref)


def test_kd_loss_teacher_only_gradient_and_no_grad_forward():
    """Without a student gradient the forward writes no dL/ds; the loss and dL/dt must not depend on that."""
    s, t, y = _r(4, 2100), _r(4, 2100).requires_grad_(), torch.tensor([0, 5, -100, 2099])
    loss = ops.kd_loss(s, t, y, 2.0, 3.0, backend="cpp")
    (g,) = torch.autograd.grad(loss, t)
    loss_ref = reference.kd_loss(s, t, y, 2.0, 3.0)
    (g_ref,) = torch.autograd.grad(loss_ref, t)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-15)
    with torch.no_grad():
        torch.testing.assert_close(ops.kd_loss(s.requires_grad_(), t, y, 2.0, 3.0, backend="cpp"), loss_ref.detach(),
                                   rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kd_loss_retained_graph_backward_twice(dtype):
    """The backward hands out the dL/ds buffer the forward wrote (for an incoming gradient of 1) and scales
    copies of it otherwise; a retained graph's later backwards must still see it unchanged."""
    s, t, y = _r(6, 33).to(dtype).requires_grad_(), _r(6, 33).to(dtype), torch.randint(0, 33, (6,))
    loss = ops.kd_loss(s, t, y, backend="cpp")
    (g1,) = torch.autograd.grad(loss, s, retain_graph=True)
    first = g1.clone()
    (g3,) = torch.autograd.grad(loss, s, torch.tensor(3.0, dtype=dtype), retain_graph=True)
    (g1_again,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(g3, 3 * first)
    torch.testing.assert_close(g1_again, first, rtol=0, atol=0)


# ------------------------------------------------------------------------------- errors and dispatch
BAD = [
    (lambda: ops.maxout(_r(2, 5, 3), 2, backend="cpp"), ValueError, "not divisible by pieces=2"),
    (lambda: ops.maxout(_r(2, 4, 3), 0, backend="cpp"), ValueError, "pieces must be a positive int"),
    (lambda: ops.maxout(torch.ones(2, 4, dtype=torch.int64), 2, backend="cpp"), TypeError, "x must be a floating"),
    (lambda: ops.maxout(_r(4), 2, backend="cpp"), ValueError, "at least 2 dims"),
    (lambda: ops.maxout(_r(2, 4).half(), 2, backend="cpp"), ValueError, "float32 and float64"),
    (lambda: ops.kd_loss(_r(2, 3).bfloat16(), _r(2, 3).bfloat16(), torch.tensor([0, 1]), backend="cpp"), ValueError,
     "bfloat16 for the maxout ops"),
    (lambda: ops.maxout_conv2d(_r(2, 3, 5, 5), _r(8, 4, 3, 3), None, 2, backend="cpp"), ValueError,
     "input channels"),
    (lambda: ops.maxout_conv2d(_r(2, 3, 5, 5), _r(8, 3, 3, 3), _r(7), 2, backend="cpp"), ValueError, "bias"),
    (lambda: ops.maxout_conv2d(_r(2, 3, 5, 5), _r(8, 3, 3, 3).float(), None, 2, backend="cpp"), TypeError,
     "share one dtype"),
    (lambda: ops.maxout_linear(_r(2, 3), _r(9, 3), None, 2, backend="cpp"), ValueError, "not divisible"),
    (lambda: ops.maxout_linear(_r(2, 3, 1), _r(8, 3), None, 2, backend="cpp"), ValueError, "x must be 2-D"),
    (lambda: ops.hint_loss(_r(2, 3, 5, 5), _r(2, 4, 4, 4), _r(8, 3, 3, 3), None, 2, backend="cpp"), ValueError,
     "hint has"),
    (lambda: ops.hint_loss(_r(2, 3, 5, 5), _r(3, 4, 3, 3), _r(8, 3, 3, 3), None, 2, backend="cpp"), ValueError,
     "batch size mismatch"),
    (lambda: ops.kd_loss(_r(2, 3), _r(2, 4), torch.tensor([0, 1]), backend="cpp"), ValueError, "must equal"),
    (lambda: ops.kd_loss(_r(2, 3), _r(2, 3), torch.tensor([0.0, 1.0]), backend="cpp"), TypeError, "target"),
    (lambda: ops.kd_loss(_r(2, 3), _r(2, 3), torch.tensor([0, 1]), temperature=0.0, backend="cpp"), ValueError,
     "temperature"),
    (lambda: ops.kd_loss(_r(2, 3), _r(2, 3), torch.tensor([0, 1]), reduction="avg", backend="cpp"), ValueError,
     "reduction"),
    (lambda: ops.kd_loss(_r(2, 3), _r(2, 3), torch.tensor([0, 1]), backend="nope"), ValueError, "backend must be"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=range(len(BAD)))
def test_bad_inputs_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize("bf16_autocast", [False, True])
def test_compile_fullgraph_small_model_matches_eager(bf16_autocast):
    torch.manual_seed(0)
    w1, b1 = (0.3 * torch.randn(8, 3, 3, 3)).requires_grad_(), torch.zeros(8, requires_grad=True)
    wl, bl = (0.1 * torch.randn(20, 4 * 4 * 4)).requires_grad_(), torch.zeros(20, requires_grad=True)
    wr = (0.3 * torch.randn(6, 4, 1, 1)).requires_grad_()
    x, t, hint = torch.randn(5, 3, 8, 8), torch.randn(5, 10), torch.randn(5, 3, 4, 4)
    y = torch.tensor([1, 2, 3, -100, 0])

    def step(x):
        with torch.autocast("cpu", dtype=BF16, enabled=bf16_autocast):  # bf16 maxout layers, fp32 losses
            h = ops.maxout_conv2d(x, w1, b1, 2, 1, 1, (2, 2))  # (5, 4, 4, 4): the fused maxout + max-pool
            logits = ops.maxout_linear(h.flatten(1), wl, bl, 2)
            return ops.kd_loss(logits, t, y) + ops.hint_loss(h, hint, wr, None, 2) + ops.maxout(h, 2).float().sum()

    params = [w1, b1, wl, bl, wr]
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss_c = compiled(x)
    grads_c = torch.autograd.grad(loss_c, params)
    loss_e = step(x)
    grads_e = torch.autograd.grad(loss_e, params)
    torch.testing.assert_close(loss_c, loss_e)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge)
    assert math.isfinite(loss_c.item())
