"""The FitNets authors' optimisation, with pylearn2's semantics, as ``torch.optim.Optimizer`` subclasses.

* ``RMSProp``: ``ms <- decay*ms + (1-decay)*g^2`` (``ms`` starts at 0), ``p <- p - lr*lr_scale*g / max(sqrt(ms), floor)``
  (pylearn2 ``learning_rule.RMSProp``: the RMS is floored at ``floor = 1/max_scaling``, no added epsilon).
* ``Momentum``: ``v <- momentum*v - lr*lr_scale*g`` (``v`` starts at 0), ``p <- p + v`` (pylearn2
  ``learning_rule.Momentum``, not Nesterov), used for the maxout teachers.
* ``MaxNorm``: after every step, each weight row (one maxout piece's filter or column) is rescaled to L2 norm
  ``<= max_norm`` (pylearn2's max_kernel_norm / max_col_norm).
* ``param_groups``: one group per distinct learning-rate scale (each maxout layer's ``lr_scale``).

Each group carries ``lr`` (the base rate, changed by schedules through ``set_lr``) and ``lr_scale``. On CPU
float32/float64 tensors the updates and the max-norm run as one fused C++ pass over all parameters of a group
(``fitnets_fast.cpp.optim``; ``fused=False`` or tensors it does not take: ``torch._foreach_*`` ops, five per
parameter, whose per-op cost was a tenth of a thin net's training step), so the optimizer is a small share
of a training step even for 20-layer students.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from . import _backend
from .nn import MaxoutConv2d, MaxoutLinear, renorm_rows_

__all__ = ["RMSProp", "Momentum", "MaxNorm", "param_groups", "maxout_layers"]

_MAXOUT = (MaxoutConv2d, MaxoutLinear)


def maxout_layers(modules: Iterable[nn.Module]) -> List[nn.Module]:
    """Every maxout layer (``MaxoutConv2d``, ``MaxoutLinear`` and subclasses) inside ``modules``."""
    return [m for module in modules for m in module.modules() if isinstance(m, _MAXOUT)]


def param_groups(scaled_modules: Sequence[Tuple[nn.Module, float]]) -> List[Dict]:
    """Parameter groups ``{"params", "lr_scale"}`` for ``[(module, multiplier), ...]``.

    A parameter of a maxout layer gets ``multiplier * layer.lr_scale``; any other parameter (e.g. a
    BatchNorm's) gets ``multiplier``. Parameters with equal scales share a group; a parameter listed
    twice raises ``ValueError``.
    """
    by_scale: Dict[float, List[nn.Parameter]] = {}
    seen = set()
    for module, multiplier in scaled_modules:
        owner = {}
        for layer in maxout_layers([module]):
            for p in layer.parameters(recurse=False):
                owner[id(p)] = float(layer.lr_scale)
        for p in module.parameters():
            if id(p) in seen:
                raise ValueError("param_groups: a parameter appears in two modules")
            seen.add(id(p))
            by_scale.setdefault(float(multiplier) * owner.get(id(p), 1.0), []).append(p)
    return [{"params": ps, "lr_scale": scale} for scale, ps in sorted(by_scale.items())]


def _fused_kernels(fused: Optional[bool]):
    """``fitnets_fast.cpp.optim`` if the fused updates may run (``fused`` True or None) and are built, else
    None; ValueError for ``fused=True`` without them."""
    if fused is False:
        return None
    cpp = _backend.module("cpp")
    if cpp is None and fused:
        raise ValueError(f"fused=True needs the C++ kernels, which are unavailable here "
                         f"({_backend.unavailable_reason('cpp')})")
    return None if cpp is None else cpp.optim


class _ScaledOptimizer(torch.optim.Optimizer):
    """Base: groups with ``lr`` and ``lr_scale``; ``set_lr`` changes the base rate of every group.

    ``fused``: None runs a group's update as one C++ pass when its tensors allow it (CPU, float32/float64,
    each gradient and state buffer in its parameter's memory layout) and as foreach ops otherwise; False
    always uses the foreach ops; True requires the C++ pass (ValueError at the step if a group does not
    qualify)."""

    def __init__(self, params, defaults, fused: Optional[bool] = None):
        self._kernels = _fused_kernels(fused)
        self.fused = fused
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            g.setdefault("lr_scale", 1.0)
            if not (float(g["lr_scale"]) > 0):
                raise ValueError(f"lr_scale must be > 0, got {g['lr_scale']!r}")
        if not (float(defaults["lr"]) > 0):
            raise ValueError(f"lr must be > 0, got {defaults['lr']!r}")
        super().__init__(groups, defaults)

    def set_lr(self, lr: float) -> None:
        """Set the base learning rate of every group (each still multiplied by its ``lr_scale``)."""
        if not (float(lr) > 0):
            raise ValueError(f"lr must be > 0, got {lr!r}")
        for g in self.param_groups:
            g["lr"] = float(lr)

    #: name of the per-parameter state buffer (zeros at the first step) handed to ``_update``
    buffer: str = ""

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient (parameters without one are skipped)."""
        if closure is not None:
            raise ValueError(f"{type(self).__name__}.step takes no closure")
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if self.buffer not in state:
                    state[self.buffer] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                bufs.append(state[self.buffer])
            if params:
                self._update(group, params, grads, bufs)

    def _update(self, group, params, grads, bufs) -> None:
        if self._kernels is None:
            reason = "the C++ kernels are not used"
        else:
            reason = self._kernels.unfusable(params, grads, bufs)
        if reason is None:
            self._fused_update(self._kernels, group, params, grads, bufs)
        elif self.fused:
            raise ValueError(f"{type(self).__name__}(fused=True) cannot fuse this update: {reason}")
        else:
            self._foreach_update(group, params, grads, bufs)

    def _fused_update(self, kernels, group, params, grads, bufs) -> None:
        raise NotImplementedError

    def _foreach_update(self, group, params, grads, bufs) -> None:
        raise NotImplementedError


class RMSProp(_ScaledOptimizer):
    """pylearn2 RMSProp: ``ms = decay*ms + (1-decay)*g^2``; ``p -= lr*lr_scale*g / max(sqrt(ms), floor)``."""

    def __init__(self, params, lr: float, decay: float = 0.9, floor: float = 1e-5, *, fused: Optional[bool] = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if not floor > 0:
            raise ValueError(f"floor must be > 0, got {floor!r}")
        super().__init__(params, dict(lr=lr, decay=decay, floor=floor), fused)

    buffer = "mean_square"

    def _fused_update(self, kernels, group, params, grads, ms) -> None:
        kernels.rmsprop_step(params, grads, ms, group["lr"] * group["lr_scale"], group["decay"], group["floor"])

    def _foreach_update(self, group, params, grads, ms) -> None:
        torch._foreach_mul_(ms, group["decay"])
        torch._foreach_addcmul_(ms, grads, grads, value=1.0 - group["decay"])
        rms = torch._foreach_sqrt(ms)
        torch._foreach_clamp_min_(rms, group["floor"])
        torch._foreach_addcdiv_(params, grads, rms, value=-group["lr"] * group["lr_scale"])


class Momentum(_ScaledOptimizer):
    """pylearn2 Momentum: ``v = momentum*v - lr*lr_scale*g``; ``p += v``. ``momentum`` is per group and
    changed by ``set_momentum`` (pylearn2's MomentumAdjustor)."""

    def __init__(self, params, lr: float, momentum: float = 0.5, *, fused: Optional[bool] = None):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum), fused)

    def set_momentum(self, momentum: float) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        for g in self.param_groups:
            g["momentum"] = float(momentum)

    buffer = "velocity"

    def _fused_update(self, kernels, group, params, grads, vel) -> None:
        kernels.momentum_step(params, grads, vel, group["lr"] * group["lr_scale"], group["momentum"])

    def _foreach_update(self, group, params, grads, vel) -> None:
        torch._foreach_mul_(vel, group["momentum"])
        torch._foreach_add_(vel, grads, alpha=-group["lr"] * group["lr_scale"])
        torch._foreach_add_(params, vel)


class MaxNorm:
    """Max-norm projection over all constrained maxout layers of ``modules``, applied by ``apply()``.

    A weight row (one piece's filter or column) with L2 norm ``n > max_norm`` is multiplied by
    ``max_norm / n``; rows within the limit are unchanged. One C++ pass over all layers where the weights
    allow it (``fused`` as for the optimizers: None when possible, False never, True required), else
    ``fitnets_fast.nn.renorm_rows_`` (foreach ops).
    """

    def __init__(self, modules: Iterable[nn.Module], *, fused: Optional[bool] = None):
        layers = [m for m in maxout_layers(modules) if m.max_norm is not None]
        self._weights = [m.weight for m in layers]
        self._limits = [float(m.max_norm) for m in layers]
        self._kernels = _fused_kernels(fused)
        self.fused = fused

    def __len__(self) -> int:
        return len(self._weights)

    @torch.no_grad()
    def apply(self) -> None:
        if not self._weights:
            return
        if self._kernels is not None and self._kernels.renorm_rows(self._weights, self._limits):
            return
        if self.fused:
            raise ValueError("MaxNorm(fused=True) cannot fuse: the weights are not dense CPU float32/float64 "
                             "tensors of one dtype with rows in consecutive memory")
        renorm_rows_(self._weights, self._limits)
