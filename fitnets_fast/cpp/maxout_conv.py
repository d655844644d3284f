"""``maxout_conv2d`` on the C++ kernels, and its fused bias + maxout + max-pooling kernel for pooled layers.

``maxout_conv2d_impl`` runs PyTorch's bias-free convolution in channels-last memory (an NCHW input is
converted; the output is channels-last too, so a stack of layers converts once): oneDNN's channels-last
convolutions are up to 3x faster than NCHW ones on the thin layers of FitNets, and the fused kernels read
adjacent pieces there just as fast. Values are the same either way; only ``Tensor.stride()`` differs.
Unpooled layers then take ``maxout_bias`` (``fitnets_fast.cpp.maxout``); pooled ones the kernel below.
Both add a tied ``(C*K,)`` or an untied ``(C*K, H, W)`` bias (one per filter and location) themselves.
With ``pieces=1`` there is nothing to fuse: the layer is PyTorch's biased convolution (and pooling).

One pass over the channels-last, k-wide pre-activation (the bias-free convolution's output) takes the max
over the pieces and over each pooling window and writes only the pooled output plus a one-byte index of
the winner (window pixel and piece), so neither the unpooled maxout output nor PyTorch's int64 pooling
indices exist. The backward scatters the gradient to the winners (adding where windows overlap) and
reduces the bias gradient in the same pass (an untied bias's: summed over the batch only). Winners match ``reference.maxout_conv2d``: see
``csrc/maxout_conv.cpp``.

The index holds ``size * size * pieces`` values at most 256; ``fits`` says when a pooling qualifies (a
pooling that does not takes ``maxout_bias`` and then PyTorch's pooling).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import _C, _alloc, reference
from . import _common
from .maxout import maxout_bias

_MAX_INDEX = 256


def fits(pieces: int, pool: Tuple[int, int]) -> bool:
    """True when every (window pixel, piece) of a ``pool=(size, stride)`` window fits the one-byte index."""
    return pool[0] * pool[0] * pieces <= _MAX_INDEX


def _geometry(pre: torch.Tensor, pieces: int, size: int, stride: int):
    """The kernels' shape arguments ``(N, H, W, C, K, P, Q, Ho, Wo)`` for a ``(N, C*K, H, W)`` pre-activation."""
    n, ck, h, w = pre.shape
    ho, wo = reference.pooled_size(h, size, stride), reference.pooled_size(w, size, stride)
    return n, h, w, ck // pieces, pieces, size, stride, ho, wo


def _outputs(pre: torch.Tensor, pieces: int, size: int, stride: int):
    n, _h, _w, c, _k, _p, _q, ho, wo = _geometry(pre, pieces, size, stride)
    out = _common.empty_in_layout((n, c, ho, wo), pre.dtype, pre, channels_last=True)
    index = _common.empty_in_layout((n, c, ho, wo), torch.uint8, pre, channels_last=True)
    return out, index


def _maxout_pool_bias(pre: torch.Tensor, bias: Optional[torch.Tensor], pieces: int, size: int,
                      stride: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``pre (N, C*K, H, W)`` (+ bias: tied ``(C*K,)`` or untied ``(C*K, H, W)``) -> (pooled maxout
    ``(N, C, Ho, Wo)``, uint8 winner index ``(N, C, Ho, Wo)``), both channels-last."""
    pre = _common.to_layout(pre, channels_last=True)
    untied = bias is not None and bias.dim() == 3
    bias = None if bias is None else _common.bias_in_kernel_layout(bias)
    out, index = _outputs(pre, pieces, size, stride)
    _C.maxout_pool_forward(_common.dtype_name(pre), pre.data_ptr(), _common.address(bias), untied, out.data_ptr(),
                           index.data_ptr(), *_geometry(pre, pieces, size, stride), _common.threads())
    return out, index


def _maxout_pool_bias_fake(pre, bias, pieces, size, stride):
    return _outputs(pre, pieces, size, stride)


def _maxout_pool_bias_backward(grad_out: torch.Tensor, index: torch.Tensor, pieces: int, size: int, stride: int,
                               height: int, width: int, bias_grad: bool, untied: bool
                               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``maxout_pool_bias``: (``grad_pre (N, C*K, height, width)`` channels-last, ``grad_bias``:
    ``(C*K,)``, or for an ``untied`` bias flat in the kernel's ``(height, width, C*K)`` order; ``(0,)`` if
    not ``bias_grad``)."""
    grad_out = _common.to_layout(grad_out, channels_last=True)
    grad_pre, grad_bias = _backward_outputs(grad_out, pieces, height, width, bias_grad, untied)
    n, c, ho, wo = grad_out.shape
    _C.maxout_pool_backward(_common.dtype_name(grad_out), grad_out.data_ptr(), index.data_ptr(), grad_pre.data_ptr(),
                            grad_bias.data_ptr() if bias_grad else 0, untied, n, height, width, c, pieces, size,
                            stride, ho, wo, _common.threads())
    return grad_pre, grad_bias


def _maxout_pool_bias_backward_fake(grad_out, index, pieces, size, stride, height, width, bias_grad, untied):
    return _backward_outputs(grad_out, pieces, height, width, bias_grad, untied)


def _backward_outputs(grad_out: torch.Tensor, pieces: int, height: int, width: int, bias_grad: bool, untied: bool):
    n, c = grad_out.shape[:2]
    grad_pre = _common.empty_in_layout((n, c * pieces, height, width), grad_out.dtype, grad_out,
                                       channels_last=True)
    bias_size = c * pieces * (height * width if untied else 1)
    grad_bias = _alloc.empty((bias_size if bias_grad else 0,), dtype=grad_out.dtype, device=grad_out.device)
    return grad_pre, grad_bias


maxout_pool_bias_backward = _common.fused_op("fitnets_fast_cpp::maxout_pool_bias_backward",
                                             _maxout_pool_bias_backward, _maxout_pool_bias_backward_fake)


def _setup_context(ctx, inputs, output):
    pre, bias, pieces, size, stride = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.args = (pieces, size, stride, pre.shape[2], pre.shape[3])
    ctx.bias_shape = None if bias is None else bias.shape


def _backward(ctx, grad_out, _grad_index):
    (index,) = ctx.saved_tensors
    needed = ctx.bias_shape is not None and ctx.needs_input_grad[1]
    untied = needed and len(ctx.bias_shape) == 3
    grad_pre, grad_bias = maxout_pool_bias_backward(grad_out, index, *ctx.args, needed, untied)
    if untied:
        grad_bias = _common.bias_from_kernel_layout(grad_bias, ctx.bias_shape)
    return grad_pre, (grad_bias if needed else None), None, None, None


maxout_pool_bias = _common.fused_op("fitnets_fast_cpp::maxout_pool_bias", _maxout_pool_bias, _maxout_pool_bias_fake,
                                    _setup_context, _backward, used_by="maxout_conv2d (pooled)")


def maxout_conv2d_impl(x, weight, bias, pieces, stride=1, padding=0, pool=None):
    """See ``fitnets_fast.reference.maxout_conv2d`` (at most ``MAX_PIECES`` pieces)."""
    if pieces == 1:
        return reference.max_pool_impl(reference.conv2d_impl(x, weight, bias, stride, padding), pool)
    pre = F.conv2d(_common.channels_last_conv_input(x), weight, None, stride, padding)
    if pool is not None and fits(pieces, pool):
        return maxout_pool_bias(pre, bias, pieces, *pool)[0]
    return reference.max_pool_impl(maxout_bias(pre, bias, pieces)[0], pool)
