"""Helpers shared by the Triton kernels: accumulator precision, dot precision, launch-config records.

Precision policy: every kernel accumulates in float32 for float32/bfloat16/float16 inputs and in float64 for
float64 inputs (so the float64 tests check the algorithm, not float32 rounding). Matrix products of float32
inputs use TF32 only when PyTorch's own flag for that op family allows it.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch
import triton
import triton.language as tl


class GemmConfig(NamedTuple):
    """Tiling of an implicit-GEMM kernel: output pixels x output channels (after maxout) x reduction slice.

    ``fuse_pieces`` (used when pieces == 2): one ``tl.dot`` over both pieces' weight rows, ``[block_m, block_k]
    x [block_k, 2*block_n]``, split into the two pieces in the epilogue, so each input tile is loaded once;
    otherwise (and for any other piece count) one reduction pass per piece.
    """

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    fuse_pieces: bool = True


def is_fp64(dtype: torch.dtype) -> bool:
    """Whether kernels on ``dtype`` accumulate in float64 (else float32)."""
    return dtype == torch.float64


def acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    """The torch dtype of partial sums for inputs of ``dtype``."""
    return torch.float64 if is_fp64(dtype) else torch.float32


def _tf32_from_precision_flags(leaf, *parents) -> Optional[bool]:
    """The TF32 decision of PyTorch's ``fp32_precision`` flags: the first of ``leaf`` and its ``parents``
    whose flag is not "none" decides ("tf32" -> True, anything else -> False); None when this PyTorch has
    no such flag on ``leaf`` or all say "none". Parents without the flag are skipped."""
    if getattr(leaf, "fp32_precision", None) is None:
        return None
    for module in (leaf,) + parents:
        value = getattr(module, "fp32_precision", "none")
        if value != "none":
            return value == "tf32"
    return None


def conv_allows_tf32() -> bool:
    """Whether PyTorch lets float32 convolutions use TF32 (cuDNN's flag).

    Newer PyTorch sets this through ``torch.backends.cudnn.conv.fp32_precision``, and once that (or a
    parent flag) has been set, reading the legacy ``torch.backends.cudnn.allow_tf32`` raises; so the new
    flags are read first and the legacy one only where they do not decide (it is then False if unreadable).
    """
    cudnn = torch.backends.cudnn
    decided = _tf32_from_precision_flags(getattr(cudnn, "conv", None), cudnn, torch.backends)
    if decided is not None:
        return decided
    try:
        return bool(cudnn.allow_tf32)
    except RuntimeError:
        return False


def matmul_allows_tf32() -> bool:
    """Whether PyTorch lets float32 matmuls use TF32 (``torch.backends.cuda.matmul``'s flag; the new
    ``fp32_precision`` flags first, as in ``conv_allows_tf32``)."""
    matmul = torch.backends.cuda.matmul
    decided = _tf32_from_precision_flags(matmul, torch.backends.cuda, torch.backends)
    if decided is not None:
        return decided
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:
        return False


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """``input_precision`` for ``tl.dot`` on ``dtype`` operands ("tf32" only for float32 with TF32 allowed)."""
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


def gemm_config(m: int, n: int, k: int) -> GemmConfig:
    """Heuristic tiles for an implicit GEMM with ``m`` output pixels, ``n`` output channels, ``k`` reduction
    channels per tap: tiles no wider than the problem (at least 16, the tensor-core minimum)."""
    block_n = min(64, max(16, triton.next_power_of_2(n)))
    block_k = min(64, max(16, triton.next_power_of_2(k)))
    block_m = 128 if m >= 8192 else 64 if m >= 1024 else 32
    return GemmConfig(block_m, block_n, block_k, 8 if block_m * block_n >= 8192 else 4)


def f64_parts(x: float) -> tuple[float, float, float]:
    """Split ``x`` into three float32-representable parts summing to it in float64.

    Triton passes Python floats to kernels as float32; a float64 kernel rebuilds the exact value from the
    parts with ``from_parts``, so its scalar hyper-parameters are not rounded to float32.
    """
    hi = float(np.float32(x))
    mid = float(np.float32(x - hi))
    return hi, mid, float(np.float32(x - hi - mid))


@triton.jit
def from_parts(hi, mid, lo, FP64: tl.constexpr):
    """The scalar split by ``f64_parts``: exact in float64 when ``FP64``, else its float32 value ``hi``."""
    if FP64:
        return tl.cast(hi, tl.float64) + tl.cast(mid, tl.float64) + tl.cast(lo, tl.float64)
    else:
        return hi


@triton.jit
def to_acc(x, FP64: tl.constexpr):
    """``x`` in the accumulator dtype: float64 if ``FP64`` else float32."""
    if FP64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)
