"""Helpers shared by the Triton kernels: accumulator precision, dot precision, launch-config records.

Precision policy: every kernel accumulates in float32 for float32/bfloat16/float16 inputs and in float64 for
float64 inputs (so the float64 tests check the algorithm, not float32 rounding). Matrix products of float32
inputs use TF32 only when PyTorch's own flag for that op family allows it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
import triton
import triton.language as tl
from torch.library import triton_op

from .._eager import dispatch


class GemmConfig(NamedTuple):
    """Tiling of an implicit-GEMM kernel: output pixels x output channels (after maxout) x reduction slice.

    ``fuse_pieces`` (used when pieces == 2): one ``tl.dot`` over both pieces' weight rows, ``[block_m, block_k]
    x [block_k, 2*block_n]``, split into the two pieces in the epilogue, so each input tile is loaded once;
    otherwise (and for any other piece count) one reduction pass per piece. ``flat_taps`` (inputs with at
    most a quarter of ``block_k`` channels, e.g. an RGB or grey first layer): the reduction runs over the
    flattened (tap, channel) index instead of (tap, channel block), so the lanes a tap's few channels leave
    empty are filled by the next taps.
    """

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    fuse_pieces: bool = True
    flat_taps: bool = False


def fused_triton_op(name: str, forward: Callable, setup_context: Optional[Callable] = None,
                    backward: Optional[Callable] = None) -> Callable:
    """Register ``forward`` as the ``torch.library.triton_op`` ``name`` (with ``register_autograd`` when a
    ``backward`` is given) and return its caller (``fitnets_fast._eager.dispatch``: the op while
    ``torch.compile`` traces, ``forward`` itself in eager mode, without the op's host cost)."""
    op = triton_op(name, mutates_args={})(forward)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    return dispatch(op, forward, setup_context, backward)


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` on the host (``triton.cdiv`` costs microseconds a call there)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``), on the host."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


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


@torch.compiler.assume_constant_result
def conv_allows_tf32() -> bool:
    """Whether PyTorch lets float32 convolutions use TF32 (cuDNN's flag).

    Newer PyTorch sets this through ``torch.backends.cudnn.conv.fp32_precision``, and once that (or a
    parent flag) has been set, reading the legacy ``torch.backends.cudnn.allow_tf32`` raises; so the new
    flags are read first and the legacy one only where they do not decide (it is then False if unreadable).
    Under ``torch.compile`` the flag is read once, at trace time, and baked into the graph (Dynamo cannot
    trace the flag objects).
    """
    cudnn = torch.backends.cudnn
    decided = _tf32_from_precision_flags(getattr(cudnn, "conv", None), cudnn, torch.backends)
    if decided is not None:
        return decided
    try:
        return bool(cudnn.allow_tf32)
    except RuntimeError:
        return False


@torch.compiler.assume_constant_result
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


# Channel tiles for the layer widths FitNets use: the widest power of two <= 64 dividing the width, so no
# column or reduction block is padding (48 = 3 x 16, 80 = 5 x 16, 96 = 3 x 32, 192 = 3 x 64). The 3-channel
# input takes the tensor-core minimum, 16, filled by several taps (``GemmConfig.flat_taps``). Other widths: the
# next power of two, 16 to 64 (``channel_tile``).
CHANNEL_TILES = {3: 16, 16: 16, 32: 32, 48: 16, 64: 64, 80: 16, 96: 32, 128: 64, 192: 64}


def channel_tile(c: int) -> int:
    """The tile over ``c`` channels (``CHANNEL_TILES``, else the next power of two in [16, 64])."""
    return CHANNEL_TILES.get(c) or min(64, max(16, next_power_of_2(c)))


def gemm_config(m: int, n: int, k: int, pieces: int = 2, dtype: Optional[torch.dtype] = None) -> GemmConfig:
    """Tiles for an implicit GEMM with ``m`` output pixels, ``n`` output channels (after maxout), ``k``
    reduction channels per tap, ``pieces`` pieces, on ``dtype`` (None: a 2- or 4-byte type).

    Channel tiles from ``channel_tile``; pixel tiles of 128/64/32 by problem size; warps so that each thread
    holds at most 32 accumulator-sized values (the fused 2-piece accumulator is ``2 * block_n`` wide; the
    per-piece passes hold the running max, the winner and a candidate), which keeps ptxas under 255
    registers without spills (the pixel tile halves where even 8 warps would hold more); at most 32 columns,
    8 warps and, for 4-byte types, 32-channel reduction tiles for more than 2 pieces. float64 takes 64-pixel and
    16-channel reduction tiles: its default-sized tiles would need 256 KiB of shared memory, over sm_90's
    227 KiB. ``aot_check`` compiles these choices for sm_90 and fails on any spill.
    """
    block_n = channel_tile(n) if pieces <= 2 else min(32, channel_tile(n))
    block_k = channel_tile(k)
    block_m = 128 if m >= 8192 else 64 if m >= 1024 else 32
    if dtype is not None and is_fp64(dtype):
        block_m, block_k = min(block_m, 64), 16
    per_pixel = block_n * (2 if pieces == 2 else 3 if pieces > 2 else 1)
    while block_m > 32 and block_m * per_pixel > 8 * 32 * 32:   # over 32 values a thread even at 8 warps
        block_m //= 2
    if pieces > 2 and (dtype is None or dtype.itemsize == 4):
        block_k = min(block_k, 32)   # per-piece passes keep more live; 4-byte operand tiles of 64 spill
    warps = min(8, max(4, next_power_of_2(cdiv(block_m * per_pixel, 32 * 32))))
    if pieces > 2:
        warps = 8   # one pass per piece (running max, winner, candidate, bias): 4 warps spilled in float32
    # Flattened taps where a tap's channels would fill at most a quarter of the reduction tile (RGB, grey): the
    # 2-D address arithmetic costs registers (a 12-channel 3x3 layer spilled in float32), worth it only there.
    return GemmConfig(block_m, block_n, block_k, warps, flat_taps=4 * k <= block_k)


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
