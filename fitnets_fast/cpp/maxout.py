"""Maxout with a fused bias on the C++ kernels: the ``maxout`` op, and the kernel ``maxout_conv2d``
(``fitnets_fast.cpp.maxout_conv``) and ``maxout_linear`` (``fitnets_fast.cpp.maxout_linear``) build on.

``maxout_conv2d`` / ``maxout_linear`` run PyTorch's own bias-free convolution / matmul, then the fused
kernel adds the bias and takes the max over the pieces in one pass, writing the output and a one-byte
index of the winning piece. Autograd saves only that index (plus whatever the conv/matmul saves: its
input and weight), never the k-wide pre-activation; the backward scatters the gradient to the winners and
reduces the bias gradient in one pass, then PyTorch's conv/matmul backward continues.

Semantics match ``fitnets_fast.reference``: ties go to the lowest piece, a NaN piece wins (the first NaN).
More than 256 pieces do not fit the one-byte index: the backend's ``unsupported`` refuses such calls. bfloat16 tensors (what
``maxout_conv2d`` / ``maxout_linear`` get under CPU autocast) are compared and biased in float and rounded
once, after the max: the values equal the reference's in bfloat16 (rounding is monotonic), and where two
sums round to the same bfloat16 value the gradient goes to the larger exact sum.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .. import _C, _alloc
from . import _common

MAX_PIECES = 256


def _maxout_bias(x: torch.Tensor, bias: Optional[torch.Tensor], pieces: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(N, C*K, *rest)`` pre-activation (+ bias: tied ``(C*K,)``, or untied ``(C*K, *rest)``, one per
    filter and location) -> (maxout output ``(N, C, *rest)``, winning piece ``uint8 (N, C, *rest)``), both
    in the layout of ``x`` (see ``_common``; channels-last with an untied bias)."""
    untied = bias is not None and bias.dim() > 1
    channels_last = untied or _common.is_channels_last(x)
    x = _common.to_layout(x, channels_last)
    bias = None if bias is None else _common.bias_in_kernel_layout(bias)
    out, piece = maxout_outputs(x, pieces, channels_last)
    m, c, k, s = _common.kernel_shape(x.shape, pieces, channels_last, untied)
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
                          channels_last: bool, bias_grad: bool, untied: bool = False
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``maxout_bias``: (``grad_in (N, C*K, *rest)`` = ``scale * grad_out`` at each winning piece,
    0 elsewhere; ``grad_bias`` = ``grad_in`` summed over all but dim 1, ``(C*K,)``, or for an ``untied``
    bias (channels-last) summed over dim 0, flat in the kernel's ``(*rest, C*K)`` order; ``(0,)`` if not
    ``bias_grad``). ``scale``: 0-dim tensor or None (= 1)."""
    grad_out = _common.to_layout(grad_out, channels_last)
    grad_in, grad_bias = _backward_outputs(grad_out, pieces, channels_last, bias_grad, untied)
    m, c, k, s = _common.kernel_shape(grad_in.shape, pieces, channels_last, untied)
    factor = 1.0 if scale is None else float(scale)
    _C.maxout_backward(_common.dtype_name(grad_out), grad_out.data_ptr(), piece.data_ptr(), factor,
                       grad_in.data_ptr(), grad_bias.data_ptr() if bias_grad else 0, m, c, k, s, _common.threads())
    return grad_in, grad_bias


def _maxout_bias_backward_fake(grad_out, piece, scale, pieces, channels_last, bias_grad, untied=False):
    return _backward_outputs(grad_out, pieces, channels_last, bias_grad, untied)


maxout_bias_backward = _common.fused_op("fitnets_fast_cpp::maxout_bias_backward", _maxout_bias_backward,
                                        _maxout_bias_backward_fake)


def _backward_outputs(grad_out: torch.Tensor, pieces: int, channels_last: bool, bias_grad: bool, untied: bool):
    shape = (grad_out.shape[0], grad_out.shape[1] * pieces, *grad_out.shape[2:])
    grad_in = _common.empty_in_layout(shape, grad_out.dtype, grad_out, channels_last)
    bias_size = math.prod(shape[1:]) if untied else shape[1]
    grad_bias = _alloc.empty((bias_size if bias_grad else 0,), dtype=grad_out.dtype, device=grad_out.device)
    return grad_in, grad_bias


def _setup_context(ctx, inputs, output):
    x, bias, pieces = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.pieces = pieces
    ctx.untied = bias is not None and bias.dim() > 1
    ctx.channels_last = ctx.untied or _common.is_channels_last(x)
    ctx.bias_shape = None if bias is None else bias.shape


def _backward(ctx, grad_out, _grad_piece):
    (piece,) = ctx.saved_tensors
    bias_grad = ctx.bias_shape is not None and ctx.needs_input_grad[1]
    grad_in, grad_bias = maxout_bias_backward(grad_out, piece, None, ctx.pieces, ctx.channels_last, bias_grad,
                                              ctx.untied)
    if bias_grad and ctx.untied:
        grad_bias = _common.bias_from_kernel_layout(grad_bias, ctx.bias_shape)
    return grad_in, (grad_bias if bias_grad else None), None


maxout_bias = _common.fused_op("fitnets_fast_cpp::maxout_bias", _maxout_bias, _maxout_bias_fake, _setup_context,
                               _backward, used_by="maxout / maxout_conv2d / maxout_linear")


# ---------------------------------------------------------------------------- the backend's *_impl
def maxout_impl(x: torch.Tensor, pieces: int) -> torch.Tensor:
    """See ``fitnets_fast.reference.maxout`` (at most ``MAX_PIECES`` pieces)."""
    if pieces == 1:
        return x
    return maxout_bias(x, None, pieces)[0]
