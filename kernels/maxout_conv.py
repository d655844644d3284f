"""Maxout convolution as an implicit GEMM (NHWC) whose epilogue adds the bias and takes the max over pieces.

GEMM view: rows = output pixels ``M = N*H_out*W_out``, columns = output channels ``C_out``, reduction over
``kH*kW*C_in``, as one flat loop over (tap, channel block). The pieces' pre-activation tiles (accumulated in
float32, float64 for float64 inputs) get their bias and are folded into a running max (``maxout.maxout_fold``)
in registers, so the ``pieces``-times wider pre-activation never reaches memory: for 2 pieces by one dot over
both pieces' weight rows split in the epilogue (``GemmConfig.fuse_pieces``), otherwise one pass per piece.
It writes the ``(N, H_out, W_out, C_out)`` output and, when a gradient will be needed, a one-byte winner index.
Inputs are read through their strides (the host hands it channels-last ``x`` so the channel loads are
contiguous); TF32 is used for float32 only when PyTorch's cuDNN convolution flag allows it
(``_common.conv_allows_tf32``), as cuDNN does.

Backward: ``maxout.maxout_backward`` scatters the incoming gradient to the winners (a full pre-activation
gradient, channels-last) and ``aten.convolution_backward`` does the rest. The tile helpers here are shared by
``maxout_linear`` (a 1x1 convolution on a 1x1 map) and ``hint_loss``.

Op: ``torch.library.triton_op`` ``fitnets_fast_triton::maxout_conv2d`` with ``register_autograd``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .. import _alloc, reference
from .._checks import first_order_only
from ._common import (GemmConfig, cdiv, conv_allows_tf32, dot_precision, fused_triton_op, gemm_config, is_fp64,
                      to_acc)
from .maxout import maxout_backward, maxout_fold, winners_needed


class ConvGeometry(NamedTuple):
    """Sizes of one maxout convolution (``c_out`` counts output channels after maxout)."""

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    h_out: int
    w_out: int
    stride: int
    padding: int

    @property
    def m(self) -> int:
        return self.n * self.h_out * self.w_out


def conv_geometry(x: torch.Tensor, weight: torch.Tensor, pieces: int, stride: int, padding: int) -> ConvGeometry:
    n, c_in, h, w = x.shape
    kh, kw = weight.shape[2:]
    return ConvGeometry(n, c_in, h, w, weight.shape[0] // pieces, kh, kw, (h + 2 * padding - kh) // stride + 1,
                        (w + 2 * padding - kw) // stride + 1, stride, padding)


@triton.jit
def _conv_piece(x_ptr, w_ptr, n_img, oh, ow, m_ok, rows, n_ok, H, W, C_in, KH, KW, conv_stride, pad,
                sxn, sxc, sxh, sxw, swo, swc, swh, sww,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FLAT_TAPS: tl.constexpr,
                FP64: tl.constexpr, PREC: tl.constexpr):
    """[BLOCK_M pixels, BLOCK_N channels] tile of ``conv(x, weight[rows])`` in the accumulator dtype.

    The reduction runs over (tap, channel block) pairs, or, with ``FLAT_TAPS`` (inputs with fewer channels
    than ``BLOCK_K``), over the flattened (tap, channel) index in blocks of ``BLOCK_K``, so a 3-channel 3x3
    layer fills 27 of 32 reduction lanes instead of 3 of 16 per tap."""
    acc = to_acc(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), FP64)
    ck = tl.arange(0, BLOCK_K)
    if FLAT_TAPS:
        taps_c = KH * KW * C_in
        for start in range(0, taps_c, BLOCK_K):
            kk = start + ck
            k_ok = kk < taps_c
            tap = kk // C_in
            c = kk % C_in
            r = tap // KW
            s = tap % KW
            ih = oh[:, None] * conv_stride - pad + r[None, :]
            iw = ow[:, None] * conv_stride - pad + s[None, :]
            ok = (m_ok[:, None] & k_ok[None, :]) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_ptr + n_img[:, None] * sxn + ih * sxh + iw * sxw + c[None, :] * sxc, mask=ok, other=0.0)
            b = tl.load(w_ptr + rows[None, :] * swo + (c * swc + r * swh + s * sww)[:, None],
                        mask=n_ok[None, :] & k_ok[:, None], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PREC, out_dtype=acc.dtype)
    else:
        c_blocks = tl.cdiv(C_in, BLOCK_K)
        # One flat loop over (tap, channel block) so the compiler can software-pipeline the loads.
        for step in range(0, KH * KW * c_blocks):
            tap = step // c_blocks
            r = tap // KW
            s = tap % KW
            c = (step % c_blocks) * BLOCK_K + ck
            c_ok = c < C_in
            ih = oh * conv_stride - pad + r
            iw = ow * conv_stride - pad + s
            pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_ptr + (n_img * sxn + ih * sxh + iw * sxw)[:, None] + c[None, :] * sxc,
                        mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_ptr + (rows * swo + r * swh + s * sww)[None, :] + c[:, None] * swc,
                        mask=n_ok[None, :] & c_ok[:, None], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PREC, out_dtype=acc.dtype)
    return acc


@triton.jit
def _bias_tile(b_ptr, rows, rows_ok, pix, m_ok, HW, BIAS: tl.constexpr, FP64: tl.constexpr):
    """The bias of weight rows ``rows``: ``[1, len(rows)]`` for a tied bias (one per row), ``[BLOCK_M,
    len(rows)]`` for an untied one (one per row and output pixel ``pix = oh * W_out + ow``, ``(C, H, W)``
    contiguous)."""
    if BIAS == "untied":
        ptrs = b_ptr + rows[None, :] * HW + pix[:, None]
        return to_acc(tl.load(ptrs, mask=m_ok[:, None] & rows_ok[None, :], other=0.0), FP64)
    else:   # one return per (compile-time) branch: the compiler wants a single return type
        return to_acc(tl.load(b_ptr + rows, mask=rows_ok, other=0.0), FP64)[None, :]


@triton.jit
def maxout_conv_tile(x_ptr, w_ptr, b_ptr, pid_m, pid_n, M, C_out, H, W, C_in, H_out, W_out, KH, KW, conv_stride,
                     pad, sxn, sxc, sxh, sxw, swo, swc, swh, sww, BIAS: tl.constexpr, PIECES: tl.constexpr,
                     FUSE_PIECES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     FLAT_TAPS: tl.constexpr, FP64: tl.constexpr, PREC: tl.constexpr):
    """One output tile of maxout(conv(x, weight) + bias): returns (pixel ids, channel ids, max, winner).
    ``BIAS``: "none", "tied" (``(C_out*PIECES,)``) or "untied" (``(C_out*PIECES, H_out, W_out)``)."""
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    n_img = (m // (H_out * W_out)).to(tl.int64)
    rem = m % (H_out * W_out)
    oh = rem // W_out
    ow = rem % W_out
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cols < C_out
    idx = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    if FUSE_PIECES and PIECES == 2:
        # Weight rows 2*c and 2*c+1 side by side: one dot, then split the interleaved columns into the pieces.
        rows = pid_n * BLOCK_N * 2 + tl.arange(0, BLOCK_N * 2)
        both = _conv_piece(x_ptr, w_ptr, n_img, oh, ow, m_ok, rows, rows < C_out * 2, H, W, C_in, KH, KW,
                           conv_stride, pad, sxn, sxc, sxh, sxw, swo, swc, swh, sww, BLOCK_M, BLOCK_N * 2, BLOCK_K,
                           FLAT_TAPS, FP64, PREC)
        if BIAS != "none":
            both += _bias_tile(b_ptr, rows, rows < C_out * 2, rem, m_ok, H_out * W_out, BIAS, FP64)
        best, second = tl.split(tl.reshape(both, (BLOCK_M, BLOCK_N, 2)))
        best, idx = maxout_fold(best, idx, second, 1)
    else:
        best = _conv_piece(x_ptr, w_ptr, n_img, oh, ow, m_ok, cols * PIECES, n_ok, H, W, C_in, KH, KW,
                           conv_stride, pad, sxn, sxc, sxh, sxw, swo, swc, swh, sww, BLOCK_M, BLOCK_N, BLOCK_K,
                           FLAT_TAPS, FP64, PREC)
        if BIAS != "none":
            best += _bias_tile(b_ptr, cols * PIECES, n_ok, rem, m_ok, H_out * W_out, BIAS, FP64)
        for p in tl.static_range(1, PIECES):
            cand = _conv_piece(x_ptr, w_ptr, n_img, oh, ow, m_ok, cols * PIECES + p, n_ok, H, W, C_in, KH, KW,
                               conv_stride, pad, sxn, sxc, sxh, sxw, swo, swc, swh, sww, BLOCK_M, BLOCK_N, BLOCK_K,
                               FLAT_TAPS, FP64, PREC)
            if BIAS != "none":
                cand += _bias_tile(b_ptr, cols * PIECES + p, n_ok, rem, m_ok, H_out * W_out, BIAS, FP64)
            best, idx = maxout_fold(best, idx, cand, p)
    return m, cols, best, idx


@triton.jit
def _maxout_conv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, idx_ptr, M, C_out, H, W, C_in, H_out, W_out, KH, KW,
                        conv_stride, pad, sxn, sxc, sxh, sxw, swo, swc, swh, sww, BIAS: tl.constexpr,
                        WRITE_IDX: tl.constexpr, PIECES: tl.constexpr, FUSE_PIECES: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FLAT_TAPS: tl.constexpr, FP64: tl.constexpr,
                        PREC: tl.constexpr):
    m, cols, best, idx = maxout_conv_tile(
        x_ptr, w_ptr, b_ptr, tl.program_id(0), tl.program_id(1), M, C_out, H, W, C_in, H_out, W_out, KH, KW,
        conv_stride, pad, sxn, sxc, sxh, sxw, swo, swc, swh, sww, BIAS, PIECES, FUSE_PIECES, BLOCK_M, BLOCK_N,
        BLOCK_K, FLAT_TAPS, FP64, PREC)
    offs = m.to(tl.int64)[:, None] * C_out + cols[None, :]
    ok = (m < M)[:, None] & (cols < C_out)[None, :]
    tl.store(y_ptr + offs, best.to(y_ptr.dtype.element_ty), mask=ok)
    if WRITE_IDX:
        tl.store(idx_ptr + offs, idx.to(tl.uint8), mask=ok)


def gemm_args(x: torch.Tensor, weight: torch.Tensor, geo: ConvGeometry) -> tuple:
    """The geometry and stride arguments shared by the implicit-GEMM kernels (``x`` as N,C,H,W and weight
    as O,I,kH,kW, any strides)."""
    return (geo.m, geo.c_out, geo.h, geo.w, geo.c_in, geo.h_out, geo.w_out, geo.kh, geo.kw, geo.stride,
            geo.padding, *x.stride(), *weight.stride())


def bias_kind(bias: Optional[torch.Tensor]) -> str:
    """The kernels' ``BIAS`` argument: "none", "tied" (a ``(C,)`` bias) or "untied" (``(C, H_out, W_out)``)."""
    return "none" if bias is None else "untied" if bias.dim() == 3 else "tied"


def conv_backward(grad_pre: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: str, stride: int,
                  padding: int, needed: tuple) -> tuple:
    """(dL/dx, dL/dweight, dL/dbias) of ``conv2d(x, weight) + bias`` from dL/d(pre-activation) ``grad_pre``
    ``(N, C, H_out, W_out)`` (any strides); ``bias`` is a ``bias_kind``; ``needed``: which of the three to
    compute (the others are None). An untied bias's gradient is ``grad_pre`` summed over the batch."""
    tied = bias == "tied"
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad_pre, x, weight, [weight.shape[0]] if tied else None, [stride, stride], [padding, padding],
        [1, 1], False, [0, 0], 1, [needed[0], needed[1], tied and needed[2]])
    if bias == "untied" and needed[2]:
        gb = grad_pre.sum(0)
    return gx, gw, gb


def gemm_grid(geo: ConvGeometry, cfg: GemmConfig) -> tuple[int, int]:
    return cdiv(geo.m, cfg.block_m), cdiv(geo.c_out, cfg.block_n)


def launch_maxout_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pieces: int,
                       geo: ConvGeometry, write_idx: bool, cfg: GemmConfig, allow_tf32: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the maxout implicit GEMM: returns the output ``(M, C_out)`` (= NHWC) and the uint8 winners
    (``(M, C_out)``, or empty when ``write_idx`` is False)."""
    y = _alloc.empty((geo.m, geo.c_out), dtype=x.dtype, device=x.device)
    idx = _alloc.empty((geo.m, geo.c_out) if write_idx else (0,), dtype=torch.uint8, device=x.device)
    if geo.m:
        wrap_triton(_maxout_conv_kernel)[gemm_grid(geo, cfg)](
            x, weight, weight if bias is None else bias, y, idx, *gemm_args(x, weight, geo),
            BIAS=bias_kind(bias), WRITE_IDX=write_idx, PIECES=pieces,
            FUSE_PIECES=cfg.fuse_pieces and pieces == 2, BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, FLAT_TAPS=cfg.flat_taps, FP64=is_fp64(x.dtype),
            PREC=dot_precision(x.dtype, allow_tf32), num_warps=cfg.num_warps)
    return y, idx


def scatter_to_pieces(grad: torch.Tensor, idx: torch.Tensor, pieces: int) -> torch.Tensor:
    """dL/d(pre-activation) ``(M, C_out*pieces)`` from dL/d(output) ``(M, C_out)`` (any strides)."""
    grad = grad.contiguous()
    return grad if pieces == 1 else maxout_backward(grad, idx, pieces)


def _maxout_conv2d_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pieces: int,
                      stride: int, padding: int, write_idx: bool, allow_tf32: bool, block_m: int, block_n: int,
                      block_k: int, num_warps: int, fuse_pieces: bool, flat_taps: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the output ``(N, H_out, W_out, C_out)`` (NHWC, contiguous) and the winners (same shape)."""
    geo = conv_geometry(x, weight, pieces, stride, padding)
    y, idx = launch_maxout_gemm(x, weight, bias, pieces, geo, write_idx,
                                GemmConfig(block_m, block_n, block_k, num_warps, fuse_pieces, flat_taps), allow_tf32)
    shape = (geo.n, geo.h_out, geo.w_out, geo.c_out)
    return y.view(shape), idx.view(shape if write_idx else (0,))


def _setup(ctx, inputs, output):
    x, weight, bias, pieces, stride, padding = inputs[:6]
    ctx.save_for_backward(x, weight, output[1])
    ctx.conv = (pieces, stride, padding, bias_kind(bias))
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_y, _grad_idx):
    first_order_only("maxout_conv2d", "triton")
    x, weight, idx = ctx.saved_tensors
    pieces, stride, padding, bias = ctx.conv
    n, h_out, w_out, c_out = grad_y.shape
    grad_pre = scatter_to_pieces(grad_y.reshape(n * h_out * w_out, c_out), idx.view(-1, c_out), pieces)
    grad_pre = grad_pre.view(n, h_out, w_out, c_out * pieces).permute(0, 3, 1, 2)
    gx, gw, gb = conv_backward(grad_pre, x, weight, bias, stride, padding, ctx.needs_input_grad[:3])
    return (gx, gw, gb) + (None,) * 11


_maxout_conv2d_op = fused_triton_op("fitnets_fast_triton::maxout_conv2d", _maxout_conv2d_forward, _setup, _backward)


def maxout_conv2d_impl(x, weight, bias, pieces, stride=1, padding=0, pool=None, *,
                       config: Optional[GemmConfig] = None):
    """The reference ``maxout_conv2d_impl``: ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)`` (returned with
    channels-last strides); ``pool`` runs PyTorch's max-pooling on that output. ``config`` overrides the
    heuristic tiles (tests use it). The bias is tied ``(C_out*pieces,)`` or untied ``(C_out*pieces, H_out,
    W_out)``."""
    geo = conv_geometry(x, weight, pieces, stride, padding)
    cfg = config or gemm_config(geo.m, geo.c_out, geo.c_in, pieces, x.dtype)
    y, _ = _maxout_conv2d_op(
        x.contiguous(memory_format=torch.channels_last), weight.contiguous(memory_format=torch.channels_last),
        None if bias is None else bias.contiguous(), pieces, stride, padding,
        pieces > 1 and winners_needed(x, weight, bias),
        conv_allows_tf32(), *cfg)
    return reference.max_pool_impl(y.permute(0, 3, 1, 2), pool)
