"""What the interpreter alone would not show about the Triton kernels on a GPU: which precision the
kernels are asked for (TF32 flags, read the way current PyTorch allows) and the tolerance a TF32 result
is held to. Runs on CPU (the kernels' launches are recorded, not run, where only the arguments matter)."""
import pytest
import torch

from fitnets_fast import _backend
from fitnets_fast.testing import TF32_EPS, check_against_reference, precision_eps, tf32

kernels = _backend.module("triton")
if kernels is None:  # pragma: no cover - triton is a CI dependency
    pytest.skip(f"triton kernels unavailable: {_backend.unavailable_reason('triton')}", allow_module_level=True)

from fitnets_fast.kernels import _common  # noqa: E402
from fitnets_fast.kernels.aot_check import record_launches  # noqa: E402

NEW_FLAGS = hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision")


def _recorded_precisions(call):
    with record_launches() as launches:
        call()
    return {launch.kwargs["PREC"] for launch in launches if "PREC" in launch.kwargs}


def _conv():
    kernels.maxout_conv2d_impl(torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3), None, 2, 1, 1)


def _linear():
    kernels.maxout_linear_impl(torch.randn(3, 5), torch.randn(4, 5), None, 2)


@pytest.mark.parametrize("call", [_conv, _linear], ids=["maxout_conv2d", "maxout_linear"])
def test_float32_kernels_follow_the_tf32_flags(call):
    with tf32(True):
        assert _recorded_precisions(call) == {"tf32"}
    with tf32(False):
        assert _recorded_precisions(call) == {"ieee"}


@pytest.mark.skipif(not NEW_FLAGS, reason="this PyTorch has no fp32_precision flags")
def test_new_precision_flags_are_read_first():
    """Setting ``torch.backends.cudnn.conv.fp32_precision`` makes the legacy ``cudnn.allow_tf32`` read raise
    on current PyTorch; the kernels read the new flags and keep working, with the precision they set."""
    with tf32(True):
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        assert not _common.conv_allows_tf32()
        assert _recorded_precisions(_conv) == {"ieee"}
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
        assert _common.conv_allows_tf32()
        assert _recorded_precisions(_conv) == {"tf32"}
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        assert _common.matmul_allows_tf32()
        assert _recorded_precisions(_linear) == {"tf32"}
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        assert not _common.matmul_allows_tf32()
        assert _recorded_precisions(_linear) == {"ieee"}
    assert torch.backends.cudnn.allow_tf32 is False  # the context restored a state the legacy read accepts


def _truncate_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` with the 13 low mantissa bits cleared (a raw-bits TF32 operand, as a tensor-core
    instruction fed unrounded float32 sees it); gradients pass straight through."""
    cut = (x.detach().view(torch.int32) & ~0x1FFF).view(torch.float32)
    return x + (cut - x).detach()


def test_tf32_tolerance_admits_truncated_tf32_and_only_under_tf32():
    """A matmul on truncated TF32 operands (the worst case a Triton TF32 dot can produce) passes the check
    when it is told TF32 was allowed (eps 2^-10) and fails the float32 bound: the float32 bound is the one
    GPU tests must run under, hence TF32 off unless a test is about TF32."""
    assert precision_eps(torch.float32, True) == TF32_EPS == 2.0 ** -10
    assert precision_eps(torch.bfloat16, True) == torch.finfo(torch.bfloat16).eps
    a, b = torch.randn(37, 301, dtype=torch.float64), torch.randn(301, 29, dtype=torch.float64)

    def kernel(x, y):
        return _truncate_to_tf32(x) @ _truncate_to_tf32(y)

    check_against_reference(kernel, torch.matmul, [a, b], torch.float32, allow_tf32=True)
    with pytest.raises(AssertionError, match="kernel error"):
        check_against_reference(kernel, torch.matmul, [a, b], torch.float32, allow_tf32=False)


def test_check_runs_under_the_precision_it_names():
    seen = []

    def kernel(x):
        seen.append((_common.conv_allows_tf32(), _common.matmul_allows_tf32()))
        return x * 2

    for allow in (True, False):
        seen.clear()
        check_against_reference(kernel, lambda x: x * 2, [torch.randn(3, dtype=torch.float64)], torch.float32,
                                allow_tf32=allow)
        assert seen == [(allow, allow)]


def test_tiles_follow_the_layer_widths_and_thin_inputs_flatten_their_taps():
    """Channel tiles divide FitNets' widths (no padded reduction or column block); inputs with at most a quarter
    of a reduction tile's channels (RGB, grey) run over flattened (tap, channel) pairs, not one tap a block."""
    for width in (16, 32, 48, 64, 80, 96, 128, 192):
        assert width % _common.channel_tile(width) == 0
    assert _common.gemm_config(8192, 96, 3).flat_taps and _common.gemm_config(8192, 16, 1).flat_taps
    assert not _common.gemm_config(8192, 96, 16).flat_taps and not _common.gemm_config(8192, 192, 96).flat_taps
    assert not _common.gemm_config(4608, 12, 12).flat_taps      # 12 of 16 lanes: not worth the address arithmetic
