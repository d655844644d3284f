"""Helpers shared by the C++-backed ops: thread count, dtype names and the maxout memory layouts.

The kernels in ``fitnets_fast._C`` see a maxout pre-activation as a contiguous ``(M, C, K, S)`` array.
Two layouts of a ``(N, C*K, *rest)`` tensor map onto it without a copy:

* "contiguous" (NCHW): ``M = N``, ``S = prod(rest)``; outputs ``(N, C, *rest)`` are contiguous.
* "channels-last" (dim 1 innermost, e.g. ``torch.channels_last`` conv outputs): ``M = N * prod(rest)``,
  ``S = 1``; outputs are allocated channels-last too, so nothing is transposed.

Any other strided input is copied to the contiguous layout first.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from .. import _alloc, _checks
from .._eager import dispatch

_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16"}


def threads() -> int:
    """Threads a kernel call may use: PyTorch's intra-op thread count."""
    return torch.get_num_threads()


def dtype_name(t: torch.Tensor) -> str:
    return _DTYPE_NAMES[t.dtype]


def address(t) -> int:
    """Data pointer of ``t`` as an int, 0 for None (the kernels treat 0 as "absent")."""
    return 0 if t is None else t.data_ptr()


def _dense_channels_last(x: torch.Tensor) -> bool:
    """True if dim 1 of ``x`` (rank >= 3) is innermost and the rest is dense (4-D: PyTorch's cached
    channels-last flag, no view created; both ignore the strides of size-1 dims)."""
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    return x.movedim(1, -1).is_contiguous()


def is_channels_last(x: torch.Tensor) -> bool:
    """True if dim 1 of ``x`` (rank >= 3) is innermost and the rest is dense, and x is not plain contiguous."""
    return x.dim() > 2 and not x.is_contiguous() and _dense_channels_last(x)


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` with dense memory in the given layout (``x`` itself if it already is)."""
    if not channels_last:
        return x.contiguous()
    return x if _dense_channels_last(x) else x.movedim(1, -1).contiguous().movedim(-1, 1)


def is_dense(t: torch.Tensor) -> bool:
    """True if ``t``'s elements fill ``t.numel()`` consecutive slots from ``data_ptr()`` (any dim order)."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def add_untied_bias(pre: torch.Tensor, bias: Optional[torch.Tensor]):
    """``(pre + bias, None)`` for an untied bias ``(C, H, W)`` on the bias-free conv output ``pre (N, C, H, W)``
    (kept channels-last), else ``(pre, bias)`` unchanged: the fused kernels then add a tied bias themselves."""
    if bias is None or bias.dim() != 3:
        return pre, bias
    # Added as (N, H, W, C) + (H, W, C), the channels-last memory order: the add and its gradient (a sum over
    # the batch) then run over contiguous rows; a (C, H, W) bias against a channels-last map made both
    # several times slower.
    nhwc = pre.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    return (nhwc + bias.permute(1, 2, 0).contiguous()).permute(0, 3, 1, 2), None


def channels_last_conv_input(x: torch.Tensor) -> torch.Tensor:
    """``x (N, C, H, W)`` in channels-last memory, with strides that tell PyTorch's convolution so.

    A one-channel tensor fits both layouts, and ``contiguous(memory_format=torch.channels_last)`` leaves
    its NCHW strides; the convolution then takes its NCHW path (here: a blocked output that oneDNN
    reorders, then a copy back to channels-last for the kernel), which took most of a one-channel
    8x8 layer's time. Restriding the same memory as ``(H*W, 1, W, 1)`` avoids that.
    """
    x = x.contiguous(memory_format=torch.channels_last)
    if x.shape[1] == 1 and x.stride(1) != 1:
        x = x.as_strided(x.shape, (x.shape[2] * x.shape[3], 1, x.shape[3], 1))
    return x


def kernel_shape(shape: torch.Size, pieces: int, channels_last: bool, untied: bool = False
                 ) -> Tuple[int, int, int, int]:
    """``(M, C, K, S)`` of a ``(N, C*K, *rest)`` pre-activation in the given layout. With an ``untied`` bias
    (channels-last only) every (location, channel) is a channel of its own: ``(N, prod(rest) * C, K, 1)``,
    whose per-channel bias is the untied bias in ``bias_in_kernel_layout``."""
    n, rest = shape[0], math.prod(shape[2:])
    c = shape[1] // pieces
    if untied:
        return n, rest * c, pieces, 1
    return (n * rest, c, pieces, 1) if channels_last else (n, c, pieces, rest)


def bias_in_kernel_layout(bias: torch.Tensor) -> torch.Tensor:
    """A tied bias ``(C*K,)`` as it is; an untied one ``(C*K, *rest)`` as ``(*rest, C*K)`` (contiguous), the
    order of a channels-last pre-activation's pixels."""
    return bias.contiguous() if bias.dim() == 1 else bias.movedim(0, -1).contiguous()


def bias_from_kernel_layout(flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of ``bias_in_kernel_layout`` for an untied bias of ``shape`` ``(C*K, *rest)``, from its
    flat ``(*rest, C*K)`` values."""
    return flat.view(*shape[1:], shape[0]).movedim(-1, 0)


def empty_in_layout(shape, dtype: torch.dtype, like: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A new ``shape`` tensor on ``like``'s device whose memory is in the given layout (``_alloc.empty``,
    which may reuse an idle buffer when ``like`` is a plain CPU tensor)."""
    shape = tuple(shape)
    if not channels_last:
        return _alloc.empty(shape, dtype=dtype, device=like.device, like=like)
    physical = (shape[0], *shape[2:], shape[1])
    last_to_dim_1 = (0, len(shape) - 1, *range(1, len(shape) - 1))
    return _alloc.empty(physical, dtype=dtype, device=like.device, like=like).permute(last_to_dim_1)


def reduced_shape(shape: torch.Size, pieces: int) -> Tuple[int, ...]:
    """Shape after maxout over dim 1: ``(N, C*K, *rest) -> (N, C, *rest)``."""
    return (shape[0], shape[1] // pieces, *shape[2:])


def fused_op(name: str, forward: Callable, fake: Callable, setup_context: Optional[Callable] = None,
             backward: Optional[Callable] = None, *, used_by: str = "") -> Callable:
    """Register ``forward`` as the ``torch.library`` custom op ``name`` (with its fake impl and, if given,
    its autograd formula) and return its caller (``fitnets_fast._eager.dispatch``: the op while
    ``torch.compile`` traces, the functions themselves in eager mode). Output 0 must be the only
    differentiable output. ``caller.op`` is the op. The backward refuses ``create_graph=True`` with an
    error naming ``used_by`` (the public ops built on this kernel): it is first-order only.
    """
    op = torch.library.custom_op(name, forward, mutates_args=())
    op.register_fake(fake)
    if backward is not None:
        first_order = backward

        def backward(ctx, *grads):
            _checks.first_order_only(used_by, "cpp")
            return first_order(ctx, *grads)

        op.register_autograd(backward, setup_context=setup_context)
    return dispatch(op, forward, setup_context, backward)
