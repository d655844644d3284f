"""The optimisers' updates and the max-norm projection on the C++ kernels: one pass per parameter group.

PyTorch's ``_foreach_*`` ops run one kernel per tensor and op on the CPU: an RMSProp step is five ops per
parameter, and on a thin net's small weights their per-op cost, not the arithmetic, is what a training step
pays. ``rmsprop_step`` / ``momentum_step`` / ``renorm_rows`` do the same arithmetic in one call over all the
tensors (see ``fitnets_fast.optim`` for the rules), and bump the tensors' version counters as in-place
PyTorch ops do (so autograd still refuses a backward through weights changed since its forward).
``unfusable`` says when tensors do not qualify (the caller then uses the foreach ops).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch.autograd.graph import increment_version

from .. import _C
from . import _common

__all__ = ["unfusable", "rmsprop_step", "momentum_step", "renorm_rows"]


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def unfusable(*tensor_lists: Sequence[torch.Tensor]) -> Optional[str]:
    """None if the kernels can update these lists (the i-th tensors of all lists being one parameter's
    tensors: plain CPU tensors of one float32/float64 dtype, dense, with identical strides), else why not."""
    if not tensor_lists or not tensor_lists[0]:
        return "no tensors"
    dtype = tensor_lists[0][0].dtype
    if dtype not in (torch.float32, torch.float64):
        return f"the fused updates take float32 and float64 tensors, got {dtype}"
    for group in zip(*tensor_lists):
        stride = group[0].stride()
        for t in group:
            if type(t) not in _PLAIN:
                return f"the fused updates take plain tensors, got {type(t).__name__}"
            if not t.is_cpu or t.dtype != dtype:
                return f"the fused updates take CPU tensors of one dtype, got {t.dtype} on {t.device}"
            if t.stride() != stride:
                return "a parameter, its gradient and its state differ in memory layout"
        if not _common.is_dense(group[0]):
            return "a parameter is not dense in memory"
    return None


def _addresses(tensors: Sequence[torch.Tensor]) -> List[int]:
    return [t.data_ptr() for t in tensors]


def rmsprop_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], mean_squares: Sequence[torch.Tensor],
                 lr: float, decay: float, floor: float) -> None:
    """In place: ``ms = decay*ms + (1-decay)*g^2``; ``p -= lr * g / max(sqrt(ms), floor)`` (``unfusable`` must
    have said None)."""
    _C.rmsprop_step(_common.dtype_name(params[0]), _addresses(params), _addresses(grads), _addresses(mean_squares),
                    [p.numel() for p in params], float(lr), float(decay), float(floor), _common.threads())
    increment_version([*params, *mean_squares])


def momentum_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], velocities: Sequence[torch.Tensor],
                  lr: float, momentum: float) -> None:
    """In place: ``v = momentum*v - lr*g``; ``p += v`` (``unfusable`` must have said None)."""
    _C.momentum_step(_common.dtype_name(params[0]), _addresses(params), _addresses(grads), _addresses(velocities),
                     [p.numel() for p in params], float(lr), float(momentum), _common.threads())
    increment_version([*params, *velocities])


def renorm_rows(weights: Sequence[torch.Tensor], limits: Sequence[float]) -> bool:
    """Max-norm in place: each row ``w[i]`` with L2 norm above its weight's limit is rescaled to that norm.
    Returns False (and changes nothing) when a weight does not qualify: ``unfusable``, or rows that are not
    consecutive blocks of memory."""
    if unfusable(weights) is not None:
        return False
    if any(w.dim() < 2 or (w.shape[0] > 1 and w.stride(0) != math.prod(w.shape[1:])) for w in weights):
        return False
    _C.renorm_rows(_common.dtype_name(weights[0]), _addresses(weights), [w.shape[0] for w in weights],
                   [math.prod(w.shape[1:]) for w in weights], [float(m) for m in limits], _common.threads())
    increment_version(weights)
    return True
