"""Maxout with a fused bias on the C++ kernels: ``maxout``, ``maxout_conv2d`` and ``maxout_linear``.

``maxout_conv2d`` / ``maxout_linear`` run PyTorch's own bias-free convolution / matmul, then the fused
kernel adds the bias and takes the max over the pieces in one pass, writing the output and a one-byte
index of the winning piece. Autograd saves only that index (plus whatever the conv/matmul saves: its
input and weight), never the k-wide pre-activation; the backward scatters the gradient to the winners and
reduces the bias gradient in one pass, then PyTorch's conv/matmul backward continues.

A pooled ``maxout_conv2d`` (``pool=(size, stride)``) takes maxout and max-pooling in one kernel
(``fitnets_fast.cpp.maxout_pool``).

``maxout_conv2d`` runs its convolution in channels-last memory (an NCHW input is converted; the output is
channels-last too, so a stack of layers converts once): oneDNN's channels-last convolutions are up to 3x
faster than NCHW ones on the thin layers of FitNets, and the fused kernel reads adjacent pieces there
just as fast. Values are the same either way; only ``Tensor.stride()`` differs.

Semantics match ``fitnets_fast.reference``: ties go to the lowest piece, a NaN piece wins (the first NaN).
More than 256 pieces do not fit the one-byte index; such calls run the reference. bfloat16 tensors (what
``maxout_conv2d`` / ``maxout_linear`` get under CPU autocast) are compared and biased in float and rounded
once, after the max: the values equal the reference's in bfloat16 (rounding is monotonic), and where two
sums round to the same bfloat16 value the gradient goes to the larger exact sum.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import _C, _alloc, reference
from . import _common, maxout_pool

MAX_PIECES = 256


def _maxout_bias(x: torch.Tensor, bias: Optional[torch.Tensor], pieces: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(N, C*K, *rest)`` pre-activation (+ bias ``(C*K,)``) -> (maxout output ``(N, C, *rest)``,
    winning piece ``uint8 (N, C, *rest)``), both in the layout of ``x`` (see ``_common``)."""
    channels_last = _common.is_channels_last(x)
    x = _common.to_layout(x, channels_last)
    bias = None if bias is None else bias.contiguous()
    out, piece = maxout_outputs(x, pieces, channels_last)
    m, c, k, s = _common.kernel_shape(x.shape, pieces, channels_last)
    _C.maxout_forward(_common.dtype_name(x), x.data_ptr(), _common.address(bias), out.data_ptr(), piece.data_ptr(),
                      m, c, k, s, _common.threads())
    return out, piece


def _maxout_bias_fake(x, bias, pieces):
    return maxout_outputs(x, pieces, _common.is_channels_last(x))


def maxout_outputs(x: torch.Tensor, pieces: int, channels_last: bool):
    """New (maxout output, uint8 winning piece) buffers for the pre-activation ``x`` in the given layout."""
    shape = _common.reduced_shape(x.shape, pieces)
    out = _common.empty_in_layout(shape, x.dtype, x, channels_last)
    piece = _common.empty_in_layout(shape, torch.uint8, x, channels_last)
    return out, piece


def _maxout_bias_backward(grad_out: torch.Tensor, piece: torch.Tensor, scale: Optional[torch.Tensor], pieces: int,
                         channels_last: bool, bias_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``maxout_bias``: (``grad_in (N, C*K, *rest)`` = ``scale * grad_out`` at each winning piece,
    0 elsewhere; ``grad_bias (C*K,)`` = ``grad_in`` summed over all but dim 1, or ``(0,)`` if not
    ``bias_grad``). ``scale``: 0-dim tensor or None (= 1)."""
    grad_out = _common.to_layout(grad_out, channels_last)
    grad_in, grad_bias = _backward_outputs(grad_out, pieces, channels_last, bias_grad)
    m, c, k, s = _common.kernel_shape(grad_in.shape, pieces, channels_last)
    factor = 1.0 if scale is None else float(scale)
    _C.maxout_backward(_common.dtype_name(grad_out), grad_out.data_ptr(), piece.data_ptr(), factor,
                       grad_in.data_ptr(), grad_bias.data_ptr() if bias_grad else 0, m, c, k, s, _common.threads())
    return grad_in, grad_bias


def _maxout_bias_backward_fake(grad_out, piece, scale, pieces, channels_last, bias_grad):
    return _backward_outputs(grad_out, pieces, channels_last, bias_grad)


maxout_bias_backward = _common.fused_op("fitnets_fast_cpp::maxout_bias_backward", _maxout_bias_backward,
                                        _maxout_bias_backward_fake)


def _backward_outputs(grad_out: torch.Tensor, pieces: int, channels_last: bool, bias_grad: bool):
    shape = (grad_out.shape[0], grad_out.shape[1] * pieces, *grad_out.shape[2:])
    grad_in = _common.empty_in_layout(shape, grad_out.dtype, grad_out, channels_last)
    grad_bias = _alloc.empty((shape[1] if bias_grad else 0,), dtype=grad_out.dtype, device=grad_out.device)
    return grad_in, grad_bias


def _setup_context(ctx, inputs, output):
    x, bias, pieces = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.pieces = pieces
    ctx.channels_last = _common.is_channels_last(x)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out, _grad_piece):
    (piece,) = ctx.saved_tensors
    bias_grad = ctx.has_bias and ctx.needs_input_grad[1]
    grad_in, grad_bias = maxout_bias_backward(grad_out, piece, None, ctx.pieces, ctx.channels_last, bias_grad)
    return grad_in, (grad_bias if bias_grad else None), None


maxout_bias = _common.fused_op("fitnets_fast_cpp::maxout_bias", _maxout_bias, _maxout_bias_fake, _setup_context,
                               _backward)


# ---------------------------------------------------------------------------- the backend's *_impl
def maxout_impl(x: torch.Tensor, pieces: int) -> torch.Tensor:
    """See ``fitnets_fast.reference.maxout``."""
    if pieces == 1:
        return x
    if pieces > MAX_PIECES:
        return reference.maxout_impl(x, pieces)
    return maxout_bias(x, None, pieces)[0]


def maxout_conv2d_impl(x, weight, bias, pieces, stride=1, padding=0, pool=None):
    """See ``fitnets_fast.reference.maxout_conv2d``. With ``pool``, maxout and pooling are one kernel
    (``maxout_pool``) when its index can hold the window."""
    if pieces == 1 or pieces > MAX_PIECES:
        return reference.maxout_conv2d_impl(x, weight, bias, pieces, stride, padding, pool)
    pre = F.conv2d(_common.channels_last_conv_input(x), weight, None, stride, padding)
    pre, bias = _common.add_untied_bias(pre, bias)
    if pool is not None and maxout_pool.fits(pieces, pool):
        return maxout_pool.maxout_pool_bias(pre, bias, pieces, *pool)[0]
    return reference.max_pool_impl(maxout_bias(pre, bias, pieces)[0], pool)


def maxout_linear_impl(x, weight, bias, pieces):
    """See ``fitnets_fast.reference.maxout_linear``."""
    if pieces == 1 or pieces > MAX_PIECES:
        return reference.maxout_linear_impl(x, weight, bias, pieces)
    return maxout_bias(F.linear(x, weight), bias, pieces)[0]
