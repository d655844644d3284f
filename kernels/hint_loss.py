"""Fused FitNets hint loss: regressor conv (stride 1) + maxout or ReLU + ``1/2 * sum (hint - r)^2 / N``, in one kernel.

The implicit-GEMM tile of ``maxout_conv`` computes the regressor output (bias and maxout in the epilogue;
``pieces=1`` for ReLU or no activation) and the epilogue goes on: ``r = relu(.)`` if asked for,
``d = r - hint``, one partial sum of ``d^2 / (2N)`` per program, and, when a gradient will be needed,
dL/d(pre-activation) = ``d / N`` at the winning piece (with ReLU: where the pre-activation is > 0) and 0
at the others, written channels-last
``(N, H_out, W_out, C_hint*pieces)`` (plus dL/dhint = ``-d / N`` when the hint needs a gradient). The
regressor output itself is never written. The loss is the sum of the partials (accumulated in float32,
float64 for float64 inputs).

Backward: ``aten.convolution_backward`` on the saved pre-activation gradient, scaled by the incoming scalar
gradient. Op: ``torch.library.triton_op`` ``fitnets_fast_triton::hint_loss`` with ``register_autograd``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .. import _alloc
from .._checks import first_order_only
from ._common import (GemmConfig, acc_torch_dtype, fused_triton_op, conv_allows_tf32, dot_precision, f64_parts, from_parts, gemm_config,
                      is_fp64)
from .maxout import winners_needed
from .maxout_conv import bias_kind, conv_backward, conv_geometry, gemm_args, gemm_grid, maxout_conv_tile


@triton.jit
def _hint_loss_kernel(x_ptr, w_ptr, b_ptr, h_ptr, part_ptr, gpre_ptr, gh_ptr, inv_n0, inv_n1, inv_n2,
                      shn, shc, shh, shw, M, C_out, H, W, C_in, H_out, W_out, KH, KW, conv_stride, pad,
                      sxn, sxc, sxh, sxw, swo, swc, swh, sww, BIAS: tl.constexpr, GRAD: tl.constexpr,
                      GRAD_HINT: tl.constexpr, RELU: tl.constexpr, PIECES: tl.constexpr, FUSE_PIECES: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FLAT_TAPS: tl.constexpr,
                      FP64: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    m, cols, r, idx = maxout_conv_tile(
        x_ptr, w_ptr, b_ptr, pid_m, pid_n, M, C_out, H, W, C_in, H_out, W_out, KH, KW, conv_stride, pad,
        sxn, sxc, sxh, sxw, swo, swc, swh, sww, BIAS, PIECES, FUSE_PIECES, BLOCK_M, BLOCK_N, BLOCK_K, FLAT_TAPS, FP64,
        PREC)
    inv_n = from_parts(inv_n0, inv_n1, inv_n2, FP64)
    ok = (m < M)[:, None] & (cols < C_out)[None, :]
    if RELU:  # PIECES == 1; NaN stays NaN (as torch.relu) and gets no gradient (as its backward)
        idx = tl.where(r > 0, 0, 1)
        r = tl.where(r < 0, 0.0, r)
    m64 = m.to(tl.int64)
    n_img = m64 // (H_out * W_out)
    rem = m64 % (H_out * W_out)
    h_offs = (n_img * shn + (rem // W_out) * shh + (rem % W_out) * shw)[:, None] + cols[None, :] * shc
    hint = tl.load(h_ptr + h_offs, mask=ok, other=0.0).to(r.dtype)
    d = tl.where(ok, r - hint, 0.0)
    partial = tl.sum(tl.sum(d * d, axis=1), axis=0) * (inv_n * 0.5)
    tl.store(part_ptr + pid_m * tl.num_programs(1) + pid_n, partial)
    if GRAD:
        g = d * inv_n
        pre = m64[:, None] * (C_out * PIECES) + cols[None, :] * PIECES
        for p in tl.static_range(PIECES):
            tl.store(gpre_ptr + pre + p, tl.where(idx == p, g, 0.0).to(gpre_ptr.dtype.element_ty), mask=ok)
    if GRAD_HINT:
        tl.store(gh_ptr + m64[:, None] * C_out + cols[None, :], (-d * inv_n).to(gh_ptr.dtype.element_ty), mask=ok)


def _hint_loss_forward(guided: torch.Tensor, hint: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  pieces: int, padding: int, relu: bool, grad: bool, grad_hint: bool, allow_tf32: bool, block_m: int,
                  block_n: int, block_k: int, num_warps: int, fuse_pieces: bool, flat_taps: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss, dL/d(pre-activation) ``(N, H_out, W_out, C*pieces)``, dL/dhint ``(N, H_out, W_out, C)``);
    a gradient not asked for is an empty tensor."""
    geo = conv_geometry(guided, weight, pieces, 1, padding)
    cfg = GemmConfig(block_m, block_n, block_k, num_warps, fuse_pieces, flat_taps)
    grid = gemm_grid(geo, cfg)
    dev, dt = guided.device, guided.dtype
    partials = _alloc.empty((grid[0] * grid[1],), dtype=acc_torch_dtype(dt), device=dev)
    nhwc = (geo.n, geo.h_out, geo.w_out)
    gpre = _alloc.empty(nhwc + (geo.c_out * pieces,) if grad else (0,), dtype=dt, device=dev)
    ghint = _alloc.empty(nhwc + (geo.c_out,) if grad_hint else (0,), dtype=dt, device=dev)
    if geo.m:
        wrap_triton(_hint_loss_kernel)[grid](
            guided, weight, weight if bias is None else bias, hint, partials, gpre, ghint,
            *f64_parts(1.0 / geo.n), *hint.stride(), *gemm_args(guided, weight, geo), BIAS=bias_kind(bias),
            GRAD=grad, GRAD_HINT=grad_hint, RELU=relu, PIECES=pieces, FUSE_PIECES=cfg.fuse_pieces and pieces == 2,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, FLAT_TAPS=cfg.flat_taps, FP64=is_fp64(dt), PREC=dot_precision(dt, allow_tf32), num_warps=cfg.num_warps)
    return partials.sum().to(dt), gpre, ghint


def _setup(ctx, inputs, output):
    guided, _, weight, bias, _, padding = inputs[:6]
    _, gpre, ghint = output
    ctx.save_for_backward(guided, weight, gpre, ghint)
    ctx.conv = (padding, bias_kind(bias))
    ctx.mark_non_differentiable(gpre, ghint)


def _backward(ctx, grad_loss, _grad_gpre, _grad_ghint):
    first_order_only("hint_loss", "triton")
    guided, weight, gpre, ghint = ctx.saved_tensors
    padding, bias = ctx.conv
    need = ctx.needs_input_grad
    gx = gw = gb = None
    if need[0] or need[2] or need[3]:
        gx, gw, gb = conv_backward(gpre.permute(0, 3, 1, 2), guided, weight, bias, 1, padding,
                                   (need[0], need[2], need[3]))
        gx, gw, gb = (None if g is None else g * grad_loss for g in (gx, gw, gb))
    gh = ghint.permute(0, 3, 1, 2) * grad_loss if ghint.numel() else None
    return (gx, gh, gw, gb) + (None,) * 12


_hint_loss_op = fused_triton_op("fitnets_fast_triton::hint_loss", _hint_loss_forward, _setup, _backward)


def hint_loss_impl(guided, hint, weight, bias, pieces, padding=0, activation="maxout", *,
                   config: Optional[GemmConfig] = None):
    """The reference ``hint_loss_impl``: ``1/2 * sum (hint - act(conv2d(guided))) ^ 2 / N`` (a scalar).
    ``config`` overrides the heuristic tiles (tests use it)."""
    geo = conv_geometry(guided, weight, pieces, 1, padding)
    cfg = config or gemm_config(geo.m, geo.c_out, geo.c_in, pieces, guided.dtype)
    loss, _, _ = _hint_loss_op(
        guided.contiguous(memory_format=torch.channels_last), hint,
        weight.contiguous(memory_format=torch.channels_last), None if bias is None else bias.contiguous(),
        pieces, padding, activation == "relu", winners_needed(guided, weight, bias), winners_needed(hint),
        conv_allows_tf32(), *cfg)
    return loss
