"""FitNets hint loss on the C++ kernels: PyTorch's bias-free regressor convolution, then one fused pass.

The epilogue kernel reads the k-wide regressor output once and does bias + maxout (or ReLU, or nothing:
``pieces=1``) + ``r - hint`` + the sum of squares, saving ``r - hint`` and a one-byte winning-piece index (both one output wide). The
backward expands ``(r - hint) * grad / N`` to the winning pieces and reduces the bias gradient in one pass
(``maxout_bias_backward``), then PyTorch's conv backward gives the guided-layer and weight gradients.
Like ``maxout_conv2d``, the convolution runs channels-last (see ``fitnets_fast.cpp.maxout_conv``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import _C, _alloc
from . import _common
from .maxout import maxout_bias_backward, maxout_outputs


def _hint_epilogue(pre: torch.Tensor, hint: torch.Tensor, bias: Optional[torch.Tensor],
                  pieces: int, relu: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pre``: regressor conv output without bias ``(N, C*K, H, W)``; ``hint`` ``(N, C, H, W)``.

    Returns (loss = ``0.5 * sum((r - hint)^2) / N`` as a 0-dim tensor, ``r - hint`` ``(N, C, H, W)``, winning
    piece ``uint8 (N, C, H, W)``) with ``r = maxout(pre + bias)``, then ``relu(r)`` if ``relu`` (``pieces``
    1; the piece is then 0 where ``r > 0`` and 1 elsewhere, so the backward scatter drops the others).
    """
    channels_last = _common.is_channels_last(pre)
    pre = _common.to_layout(pre, channels_last)
    hint = _common.to_layout(hint, channels_last)
    bias = None if bias is None else bias.contiguous()
    loss, diff, piece = _outputs(pre, pieces, channels_last)
    m, c, k, s = _common.kernel_shape(pre.shape, pieces, channels_last)
    squares = _C.hint_forward(_common.dtype_name(pre), pre.data_ptr(), _common.address(bias), hint.data_ptr(),
                              diff.data_ptr(), piece.data_ptr(), m, c, k, s, relu, _common.threads())
    n = pre.shape[0]
    loss.fill_(0.5 * squares / n if n else float("nan"))
    return loss, diff, piece


def _hint_epilogue_fake(pre, hint, bias, pieces, relu):
    return _outputs(pre, pieces, _common.is_channels_last(pre))


def _outputs(pre: torch.Tensor, pieces: int, channels_last: bool):
    diff, piece = maxout_outputs(pre, pieces, channels_last)
    return _alloc.empty((), dtype=pre.dtype, device=pre.device), diff, piece


def _setup_context(ctx, inputs, output):
    pre, _hint, bias, pieces, _relu = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(output[1], output[2])
    ctx.pieces = pieces
    ctx.batch = pre.shape[0]
    ctx.channels_last = _common.is_channels_last(pre)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_loss, _grad_diff, _grad_piece):
    diff, piece = ctx.saved_tensors
    scale = grad_loss / ctx.batch
    bias_grad = ctx.has_bias and ctx.needs_input_grad[2]
    grad_pre = grad_bias = grad_hint = None
    if ctx.needs_input_grad[0] or bias_grad:
        grad_pre, grad_bias = maxout_bias_backward(diff, piece, scale, ctx.pieces, ctx.channels_last, bias_grad)
    if ctx.needs_input_grad[1]:
        grad_hint = diff * -scale
    return grad_pre, grad_hint, (grad_bias if bias_grad else None), None, None


hint_epilogue = _common.fused_op("fitnets_fast_cpp::hint_epilogue", _hint_epilogue, _hint_epilogue_fake, _setup_context,
                                 _backward, used_by="hint_loss")


def hint_loss_impl(guided, hint, weight, bias, pieces, padding=0, activation="maxout"):
    """See ``fitnets_fast.reference.hint_loss`` (at most ``MAX_PIECES`` pieces; ``pieces`` 1 for "relu" and
    "none")."""
    pre = F.conv2d(_common.channels_last_conv_input(guided), weight, None, 1, padding)
    pre, bias = _common.add_untied_bias(pre, bias)
    return hint_epilogue(pre, hint, bias, pieces, activation == "relu")[0]
