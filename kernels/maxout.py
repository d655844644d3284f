"""Maxout over dim 1 as Triton kernels, plus the pieces every maxout kernel shares.

Layout: a contiguous input viewed as ``(outer, C*pieces, inner)`` (``outer = N``, ``inner = H*W`` for NCHW;
``outer = N*H*W``, ``inner = 1`` for an NHWC pre-activation) maps to ``(outer, C, inner)``. The forward writes
the output and a one-byte winning-piece index (only when a gradient will be needed); the backward
(``maxout_backward``, also used by the maxout conv/linear kernels) writes the whole input gradient in one
pass: the incoming gradient at the winner, 0 at the other pieces (no zero-fill launch).

Tie rule (the reference's): the lowest piece index wins; a NaN piece wins over numbers (NaN propagates).
Ops: ``torch.library.triton_op`` ``fitnets_fast_triton::maxout`` / ``fitnets_fast_triton::maxout_backward``, autograd via
``register_autograd``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .. import _alloc
from .._checks import first_order_only
from ._common import cdiv, fused_triton_op

BLOCK = 1024


@triton.jit
def maxout_fold(best, idx, cand, piece):
    """Fold candidate piece ``piece`` (values ``cand``) into the running (``best``, ``idx``): a strictly larger
    value or a first NaN takes over, so the lowest index wins ties."""
    take = (cand > best) | ((cand != cand) & (best == best))
    return tl.where(take, cand, best), tl.where(take, piece, idx)


@triton.jit
def _maxout_kernel(x_ptr, y_ptr, idx_ptr, total, inner, PIECES: tl.constexpr, WRITE_IDX: tl.constexpr,
                   BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    oc = offs // inner  # (outer, C) row of the output element
    src = oc * (PIECES - 1) * inner + offs  # == (oc * PIECES) * inner + offs % inner
    best = tl.load(x_ptr + src, mask=ok)
    idx = tl.zeros((BLOCK,), dtype=tl.int32)
    for p in tl.static_range(1, PIECES):
        best, idx = maxout_fold(best, idx, tl.load(x_ptr + src + p * inner, mask=ok), p)
    tl.store(y_ptr + offs, best, mask=ok)
    if WRITE_IDX:
        tl.store(idx_ptr + offs, idx.to(tl.uint8), mask=ok)


@triton.jit
def _maxout_backward_kernel(g_ptr, idx_ptr, gx_ptr, total, inner, PIECES: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    oc = offs // inner
    dst = oc * (PIECES - 1) * inner + offs
    g = tl.load(g_ptr + offs, mask=ok)
    idx = tl.load(idx_ptr + offs, mask=ok).to(tl.int32)
    for p in tl.static_range(PIECES):
        tl.store(gx_ptr + dst + p * inner, tl.where(idx == p, g, 0.0).to(g.dtype), mask=ok)


def _inner(x: torch.Tensor) -> int:
    """Elements per channel per sample: the product of the dims after dim 1."""
    return math.prod(x.shape[2:])


def _maxout_forward(x: torch.Tensor, pieces: int, write_idx: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, C*pieces, *rest)`` contiguous -> (output ``(N, C, *rest)``, uint8 winner index or empty)."""
    shape = (x.shape[0], x.shape[1] // pieces) + tuple(x.shape[2:])
    y = _alloc.empty(shape, dtype=x.dtype, device=x.device)
    idx = _alloc.empty(shape if write_idx else (0,), dtype=torch.uint8, device=x.device)
    total = y.numel()
    if total:
        wrap_triton(_maxout_kernel)[(cdiv(total, BLOCK),)](
            x, y, idx, total, _inner(x), PIECES=pieces, WRITE_IDX=write_idx, BLOCK=BLOCK)
    return y, idx


def _maxout_backward_forward(grad: torch.Tensor, idx: torch.Tensor, pieces: int) -> torch.Tensor:
    """Gradient of maxout: ``grad`` ``(outer, C, *rest)`` and its winner index -> ``(outer, C*pieces, *rest)``
    with ``grad`` at each winning piece and 0 elsewhere. ``grad`` must be contiguous."""
    shape = (grad.shape[0], grad.shape[1] * pieces) + tuple(grad.shape[2:])
    gx = _alloc.empty(shape, dtype=grad.dtype, device=grad.device)
    total = grad.numel()
    if total:
        wrap_triton(_maxout_backward_kernel)[(cdiv(total, BLOCK),)](
            grad, idx, gx, total, _inner(grad), PIECES=pieces, BLOCK=BLOCK)
    return gx


maxout_backward = fused_triton_op("fitnets_fast_triton::maxout_backward", _maxout_backward_forward)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.pieces = inputs[1]
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_y, _grad_idx):
    first_order_only("maxout", "triton")
    (idx,) = ctx.saved_tensors
    return maxout_backward(grad_y.contiguous(), idx, ctx.pieces), None, None


_maxout_op = fused_triton_op("fitnets_fast_triton::maxout", _maxout_forward, _setup, _backward)


def maxout_impl(x: torch.Tensor, pieces: int) -> torch.Tensor:
    """The reference ``maxout_impl``: ``(N, C*pieces, *rest) -> (N, C, *rest)``; ``pieces=1`` returns ``x``."""
    if pieces == 1:
        return x
    return _maxout_op(x.contiguous(), pieces, winners_needed(x))[0]


def winners_needed(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether a forward must record winners: grad mode is on and some input requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
