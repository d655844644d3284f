"""Maxout fully-connected layer: the maxout implicit GEMM of ``maxout_conv`` on a 1x1 map (a matmul with the
bias + max-over-pieces epilogue), writing the ``(N, out_features)`` output and a one-byte winner index.

Backward: the winners' scatter (``maxout.maxout_backward``) then two matmuls and a column sum. TF32 is used
for float32 only when PyTorch's matmul flag allows it (``_common.matmul_allows_tf32``), as for ``F.linear``.
Op: ``torch.library.triton_op`` ``fitnets_fast_triton::maxout_linear`` with ``register_autograd``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.library import triton_op

from .._checks import first_order_only
from ._common import GemmConfig, fused_triton_op, gemm_config, matmul_allows_tf32
from .maxout import winners_needed
from .maxout_conv import ConvGeometry, launch_maxout_gemm, scatter_to_pieces


def _geometry(x: torch.Tensor, weight: torch.Tensor, pieces: int) -> ConvGeometry:
    return ConvGeometry(x.shape[0], x.shape[1], 1, 1, weight.shape[0] // pieces, 1, 1, 1, 1, 1, 0)


def _maxout_linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pieces: int,
                      write_idx: bool, allow_tf32: bool, block_m: int, block_n: int, block_k: int, num_warps: int,
                      fuse_pieces: bool, flat_taps: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the output ``(N, out_features)`` and the uint8 winners (same shape, or empty)."""
    # As a convolution: x is (N, C_in, 1, 1) and weight (C_out*pieces, C_in, 1, 1); spatial strides unused.
    return launch_maxout_gemm(x[:, :, None, None], weight[:, :, None, None], bias, pieces,
                              _geometry(x, weight, pieces), write_idx,
                              GemmConfig(block_m, block_n, block_k, num_warps, fuse_pieces, flat_taps), allow_tf32)


def _setup(ctx, inputs, output):
    x, weight, bias, pieces = inputs[:4]
    ctx.save_for_backward(x, weight, output[1])
    ctx.pieces = pieces
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_y, _grad_idx):
    first_order_only("maxout_linear", "triton")
    x, weight, idx = ctx.saved_tensors
    grad_pre = scatter_to_pieces(grad_y, idx, ctx.pieces)
    need = ctx.needs_input_grad
    gx = grad_pre @ weight if need[0] else None
    gw = grad_pre.t() @ x if need[1] else None
    gb = grad_pre.sum(0) if ctx.has_bias and need[2] else None
    return (gx, gw, gb) + (None,) * 9


_maxout_linear_op = fused_triton_op("fitnets_fast_triton::maxout_linear", _maxout_linear_forward, _setup, _backward)


def maxout_linear_impl(x, weight, bias, pieces, *, config: Optional[GemmConfig] = None):
    """The reference ``maxout_linear_impl``: ``(N, in) -> (N, out)``. ``config`` overrides the tiles."""
    cfg = config or gemm_config(x.shape[0], weight.shape[0] // pieces, x.shape[1], pieces, x.dtype)
    y, _ = _maxout_linear_op(x, weight, None if bias is None else bias.contiguous(), pieces,
                             pieces > 1 and winners_needed(x, weight, bias),
                             matmul_allows_tf32(), *cfg)
    return y
