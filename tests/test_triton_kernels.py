"""Triton kernels (fitnets_fast.kernels) against the float64 reference.

Without CUDA these run under ``TRITON_INTERPRET=1`` on CPU tensors (set by conftest.py). Shapes are small and
deliberately not multiples of the tiles (masked edges); each tiling configuration is tested explicitly, not
only the heuristic's choice; outputs are poisoned (``check_against_reference``) and every gradient, teacher
and hint included, is compared.
"""
import pytest
import torch

from fitnets_fast import _backend, ops, reference
from fitnets_fast.testing import check_against_reference, offset_logits

kernels = _backend.module("triton")
if kernels is None:  # pragma: no cover - triton is a CI dependency
    pytest.skip(f"triton kernels unavailable: {_backend.unavailable_reason('triton')}", allow_module_level=True)
if not torch.cuda.is_available() and not _backend._TRITON_INTERPRET:  # pragma: no cover
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

from fitnets_fast.kernels._common import GemmConfig  # noqa: E402
from fitnets_fast.kernels.kd_loss import KDConfig, kd_config  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float64, torch.float32]


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float64, device=DEVICE)


# ------------------------------------------------------------------------------------------------ KD loss
KD_CONFIGS = [
    KDConfig(4, 16),  # whole rows in registers, several rows per program, last program half empty
    KDConfig(1, 4),  # online softmax over 3 column blocks (last one masked), one row per program
    KDConfig(2, 8),  # online softmax with two rows per program
    None,  # the heuristic
]


@pytest.mark.parametrize("config", KD_CONFIGS, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kd_loss(config, reduction, dtype):
    n, k = 7, 11
    s, t = randn(n, k) * 3, randn(n, k) * 3
    y = torch.randint(0, k, (n,), device=DEVICE)
    y[[1, 4]] = -100
    args = (3.0, 4.0, 1.5, 0.7, reduction, -100)
    check_against_reference(lambda a, b, c: kernels.kd_loss_impl(a, b, c, *args, config=config),
                            lambda a, b, c: reference.kd_loss_impl(a, b, c, *args), [s, t, y], dtype,
                            names=["d/dstudent", "d/dteacher"])


@pytest.mark.parametrize("config", KD_CONFIGS, ids=str)
@pytest.mark.parametrize("student_temperature", [None, 1.0])
def test_kd_loss_offset_logits_lose_no_accuracy(config, student_temperature):
    """Logits with a large common offset (float32 values): every exponential is of a difference to the row
    maximum, so float32 must be within the margin of the float64 result by itself (the float32 reference,
    which divides first, is off by up to ~100 eps here). Row 0's teacher maximum moves to every next column
    block and row 1's teacher is sharp, so the online tilings move their centre c across blocks."""
    n, k = 7, 11
    s, t = offset_logits(n, k, device=DEVICE), offset_logits(n, k, device=DEVICE)
    t[0] = t[0].sort().values
    t[1, 9] = t[1].max() + 20
    y = torch.randint(0, k, (n,), device=DEVICE)
    y[2] = -100
    args = (3.0, 4.0, student_temperature, 1.0, "mean", -100)
    check_against_reference(lambda a, b, c: kernels.kd_loss_impl(a, b, c, *args, config=config),
                            lambda a, b, c: reference.kd_loss_impl(a, b, c, *args), [s, t, y], torch.float32,
                            names=["d/dstudent", "d/dteacher"], allow_reference_error=False)


@pytest.mark.parametrize("config", [KDConfig(8, 8), KDConfig(1, 2)], ids=str)
def test_kd_loss_defaults_all_ignored_and_narrow_labels(config):
    """T_s = T (None), every row unlabelled with "mean" (hard term 0), uint8 labels with ignore_index 255."""
    n, k = 5, 3
    s, t = randn(n, k), randn(n, k)
    y = torch.full((n,), 255, dtype=torch.uint8, device=DEVICE)
    check_against_reference(lambda a, b, c: kernels.kd_loss_impl(a, b, c, ignore_index=255, config=config),
                            lambda a, b, c: reference.kd_loss_impl(a, b, c, ignore_index=255), [s, t, y],
                            torch.float32)


def test_kd_loss_saves_the_logits_and_row_statistics_not_a_gradient():
    """Forward + backward read each row twice and write the gradient once: the forward keeps only what autograd
    holds anyway (the logits, the labels) and 8 statistics a row; the backward writes g * dL/ds directly."""
    s, t = randn(6, 50).requires_grad_(), randn(6, 50)
    y = torch.randint(0, 50, (6,), device=DEVICE)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(tuple(x.shape)) or x, lambda x: x):
        loss = kernels.kd_loss_impl(s, t, y, config=KDConfig(1, 16))
    assert sorted(saved) == sorted([(6, 50), (6, 50), (6,), (6, 8)])
    loss.backward(torch.tensor(2.5, dtype=torch.float64, device=DEVICE))
    s2 = s.detach().clone().requires_grad_()
    reference.kd_loss_impl(s2, t, y).backward(torch.tensor(2.5, dtype=torch.float64, device=DEVICE))
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-12, atol=1e-14)


def test_kd_loss_without_gradients_matches():
    s, t = randn(6, 9), randn(6, 9)
    y = torch.randint(0, 9, (6,), device=DEVICE)
    with torch.no_grad():
        got = kernels.kd_loss_impl(s, t, y, config=KDConfig(2, 4))
    assert torch.allclose(got, reference.kd_loss_impl(s, t, y), rtol=1e-12, atol=0)


def test_kd_loss_largest_class_count():
    """256K classes (2^18 - 3) with the heuristic's column-block loop."""
    k = (1 << 18) - 3
    y = torch.tensor([0, k - 1, -100], device=DEVICE)
    check_against_reference(kernels.kd_loss_impl, reference.kd_loss_impl, [randn(3, k) * 3, randn(3, k) * 3, y],
                            torch.float32, names=["d/dstudent", "d/dteacher"])


def test_kd_config_small_classes_use_one_program():
    """128 x 10 (CIFAR-10 batch) fits one program: the loss is a single launch."""
    cfg = kd_config(128, 10)
    assert cfg.rows >= 128 and cfg.block_k >= 10
    assert kd_config(4096, 32000).block_k < 32000  # large vocabularies take the column loop


# ------------------------------------------------------------------------------------------------- maxout
@pytest.mark.parametrize("shape,pieces", [((3, 10, 7, 9), 2), ((5, 12), 3), ((2, 6, 5), 6)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_maxout(shape, pieces, dtype):
    check_against_reference(lambda x: kernels.maxout_impl(x, pieces), lambda x: reference.maxout_impl(x, pieces),
                            [randn(*shape)], dtype)


# -------------------------------------------------------------------------------------------- maxout conv
CONV_CASES = [
    # (C_in, stride, padding, pieces, kernel, config)
    (5, 1, 1, 2, 3, GemmConfig(16, 16, 16)),  # pieces=2: one dot over both pieces, split in the epilogue
    (5, 1, 1, 2, 3, GemmConfig(16, 16, 16, fuse_pieces=False)),  # pieces=2, one pass per piece
    (5, 2, 0, 3, 3, GemmConfig(32, 16, 16)),
    (20, 1, 1, 2, 2, GemmConfig(16, 16, 16)),  # two reduction blocks over C_in
    (5, 1, 0, 1, 3, GemmConfig(64, 32, 32)),  # pieces=1: plain conv, one pixel block
    (5, 1, 1, 2, 3, None),                    # the heuristic
    (3, 1, 1, 2, 3, None),                    # the heuristic: 3 channels, so flattened taps
    (3, 1, 1, 2, 3, GemmConfig(16, 16, 16, flat_taps=True)),    # 27 (tap, channel) pairs: 2 blocks, a ragged tail
    (3, 2, 1, 3, 3, GemmConfig(32, 16, 16, fuse_pieces=False, flat_taps=True)),  # stride 2, one pass per piece
    (1, 1, 0, 2, 3, GemmConfig(16, 16, 16, flat_taps=True)),    # one input channel (MNIST)
]


@pytest.mark.parametrize("c_in,stride,padding,pieces,ksize,config", CONV_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_maxout_conv2d(c_in, stride, padding, pieces, ksize, config, dtype):
    x, w, b = randn(3, c_in, 7, 9), randn(3 * pieces, c_in, ksize, ksize), randn(3 * pieces)
    check_against_reference(
        lambda *a: kernels.maxout_conv2d_impl(*a, pieces, stride, padding, config=config),
        lambda *a: reference.maxout_conv2d_impl(*a, pieces, stride, padding), [x, w, b], dtype,
        names=["d/dx", "d/dweight", "d/dbias"])


def test_maxout_conv2d_pooled():
    """``pool`` pools the kernel's output with PyTorch (ceil mode, overlapping windows here)."""
    check_against_reference(
        lambda *a: kernels.maxout_conv2d_impl(*a, 2, 1, 1, (3, 2), config=GemmConfig(16, 16, 16)),
        lambda *a: reference.maxout_conv2d_impl(*a, 2, 1, 1, (3, 2)), [randn(2, 3, 8, 9), randn(6, 3, 3, 3), randn(6)],
        torch.float64, names=["d/dx", "d/dweight", "d/dbias"])


def test_maxout_conv2d_saves_one_byte_winners_not_the_preactivation():
    x = torch.randn(3, 5, 7, 9, device=DEVICE, requires_grad=True)
    w = torch.randn(6, 5, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(6, device=DEVICE, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = kernels.maxout_conv2d_impl(x, w, b, 2, 1, 1)
    assert y.shape == (3, 3, 7, 9)
    winners = [t for t in saved if t.dtype == torch.uint8]
    assert len(winners) == 1 and winners[0].numel() == y.numel()
    floating = sorted(tuple(t.shape) for t in saved if t.is_floating_point())
    assert floating == sorted([tuple(x.shape), tuple(w.shape)])  # x and weight only: no pre-activation


# ------------------------------------------------------------------------------------------ maxout linear
@pytest.mark.parametrize("pieces,config", [(5, GemmConfig(16, 16, 16)), (2, GemmConfig(32, 16, 32)), (1, None)],
                         ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_maxout_linear(pieces, config, dtype):
    x, w, b = randn(7, 21), randn(3 * pieces, 21), randn(3 * pieces)
    check_against_reference(lambda *a: kernels.maxout_linear_impl(*a, pieces, config=config),
                            lambda *a: reference.maxout_linear_impl(*a, pieces), [x, w, b], dtype,
                            names=["d/dx", "d/dweight", "d/dbias"])


# ---------------------------------------------------------------------------------------------- hint loss
@pytest.mark.parametrize("padding,pieces,config", [(0, 2, GemmConfig(16, 16, 16)), (1, 1, GemmConfig(32, 16, 16)),
                                                   (0, 2, GemmConfig(32, 16, 16, fuse_pieces=False))], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hint_loss(padding, pieces, config, dtype):
    guided, w, b = randn(3, 5, 7, 9), randn(4 * pieces, 5, 2, 3), randn(4 * pieces)
    hint = randn(3, 4, 7 + 2 * padding - 1, 9 + 2 * padding - 2)
    check_against_reference(lambda g, h, w, b: kernels.hint_loss_impl(g, h, w, b, pieces, padding, config=config),
                            lambda g, h, w, b: reference.hint_loss_impl(g, h, w, b, pieces, padding),
                            [guided, hint, w, b], dtype, names=["d/dguided", "d/dhint", "d/dweight", "d/dbias"])


def test_hint_loss_fixed_hint_no_bias():
    """The usual stage-1 case: the teacher hint is a constant (no gradient), no bias."""
    hint = randn(3, 4, 7, 9).float().double()  # exact in float32
    check_against_reference(lambda g, w: kernels.hint_loss_impl(g, hint.to(g.dtype), w, None, 2, 1,
                                                               config=GemmConfig(16, 16, 16)),
                            lambda g, w: reference.hint_loss_impl(g, hint.to(g.dtype), w, None, 2, 1),
                            [randn(3, 5, 7, 9), randn(8, 5, 3, 3)], torch.float32, names=["d/dguided", "d/dweight"])


# ---------------------------------------------------------------------------------------------- dispatch
def test_public_ops_dispatch_to_triton():
    x, w, b = randn(2, 4, 5, 6), randn(6, 4, 3, 3), randn(6)
    assert torch.allclose(ops.maxout_conv2d(x, w, b, 2, 1, 1, backend="triton"),
                          reference.maxout_conv2d(x, w, b, 2, 1, 1), rtol=1e-12, atol=1e-12)
    s, t = randn(4, 10), randn(4, 10)
    y = torch.randint(0, 10, (4,), device=DEVICE)
    assert torch.allclose(ops.kd_loss(s, t, y, backend="triton"), reference.kd_loss(s, t, y), rtol=1e-12, atol=0)
    for op in _backend.OPS:
        assert _backend.implements("triton", op), op


# ----------------------------------------------------------------------------------- real compiler, GPU script
def _run_script(args, env):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable] + args, cwd=root, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90():
    """The interpreter cannot catch what only the compiler rejects: compile every kernel specialisation the
    ops launch at the small shapes (bf16, forward with and without gradients, backward; specialised as the
    runtime does) down to an sm_90 cubin with Triton's bundled ptxas, failing on spills or shared memory over
    the limit, then trace the ops as torch.compile does (Dynamo export, fake-tensor forward + backward). The
    full check (every dtype, TF32 on/off, the preset networks' shapes) is ``aot_check`` without ``--quick``."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = _run_script(["-m", "fitnets_fast.kernels.aot_check", "--arch", "90", "--quick"], env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert " 0 failed" in proc.stdout and "traced: " in proc.stdout


@pytest.mark.slow
def test_gpu_check_dry_run():
    """benchmarks/gpu_check.py runs end to end on tiny CPU shapes under the interpreter."""
    import os

    proc = _run_script(["benchmarks/gpu_check.py", "--dry-run"], dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "accuracy failures: 0" in proc.stdout and "| triton fp32 |" in proc.stdout
