"""Public functional API: the reference signatures, each call dispatched to the fastest backend.

Every function takes ``backend="auto"`` ("auto", "reference", "cpp", "triton"); see
``fitnets_fast._backend`` for how "auto" chooses and ``fitnets_fast.use_backend`` to force one. Arguments
are validated here once; shapes and semantics are documented on the twins in ``fitnets_fast.reference``.

Under ``torch.autocast`` the ops follow PyTorch's policy for their aten counterparts: ``maxout_conv2d`` and
``maxout_linear`` (like conv2d / linear) run in the autocast dtype, ``hint_loss`` and ``kd_loss`` (like
mse_loss / cross_entropy) in float32, ``maxout`` in its input's dtype; the backend then runs with autocast off.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _backend, _checks

__all__ = ["maxout", "maxout_conv2d", "maxout_linear", "hint_loss", "kd_loss"]

_backend.preload()


def _autocast_dtype(x, low_precision: bool) -> Optional[torch.dtype]:
    """The dtype an op on tensor ``x`` runs in under ``torch.autocast`` on ``x``'s device type (the autocast
    dtype when ``low_precision``, else float32), or None when autocast is off there (or ``x`` is no tensor)."""
    if not isinstance(x, torch.Tensor) or not torch.is_autocast_enabled(x.device.type):
        return None
    return torch.get_autocast_dtype(x.device.type) if low_precision else torch.float32


def _cast(dtype: torch.dtype, *values):
    """``values`` with each floating-point tensor cast to ``dtype`` (anything else is left to the checks)."""
    return tuple(v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in values)


def maxout(x: torch.Tensor, pieces: int, *, backend: str = "auto") -> torch.Tensor:
    """Maxout over dim 1, ``(N, C*pieces, *rest) -> (N, C, *rest)``; see ``reference.maxout``."""
    _checks.maxout_input(x, pieces)
    return _backend.impl("maxout", backend, x.device, x.dtype)(x, pieces)


def maxout_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pieces: int,
                  stride: int = 1, padding: int = 0, pool: Optional[Tuple[int, int]] = None, *,
                  backend: str = "auto") -> torch.Tensor:
    """Conv2d + maxout (+ max-pooling ``pool=(size, stride)``, ceil mode), ``(N, C_in, H, W) -> (N, C_out, H', W')``;
    see ``reference.maxout_conv2d``."""
    dtype = _autocast_dtype(x, low_precision=True)
    if dtype is not None:
        with torch.autocast(x.device.type, enabled=False):
            return maxout_conv2d(*_cast(dtype, x, weight, bias), pieces, stride, padding, pool, backend=backend)
    _checks.maxout_conv2d_args(x, weight, bias, pieces, stride, padding, pool)
    impl = _backend.impl("maxout_conv2d", backend, x.device, x.dtype)
    return impl(x, weight, bias, pieces, stride, padding, None if pool is None else tuple(pool))


def maxout_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pieces: int, *,
                  backend: str = "auto") -> torch.Tensor:
    """Linear + maxout, ``(N, in) -> (N, out)``; see ``reference.maxout_linear``."""
    dtype = _autocast_dtype(x, low_precision=True)
    if dtype is not None:
        with torch.autocast(x.device.type, enabled=False):
            return maxout_linear(*_cast(dtype, x, weight, bias), pieces, backend=backend)
    _checks.maxout_linear_args(x, weight, bias, pieces)
    return _backend.impl("maxout_linear", backend, x.device, x.dtype)(x, weight, bias, pieces)


def hint_loss(guided: torch.Tensor, hint: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
              pieces: int, padding: int = 0, *, backend: str = "auto") -> torch.Tensor:
    """1/2 * sum (hint - maxout_conv2d(guided))^2 averaged over the batch; see ``reference.hint_loss``."""
    dtype = _autocast_dtype(guided, low_precision=False)
    if dtype is not None:
        with torch.autocast(guided.device.type, enabled=False):
            return hint_loss(*_cast(dtype, guided, hint, weight, bias), pieces, padding, backend=backend)
    _checks.hint_loss_args(guided, hint, weight, bias, pieces, padding)
    return _backend.impl("hint_loss", backend, guided.device, guided.dtype)(guided, hint, weight, bias, pieces, padding)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
            temperature: float = 3.0, lam: float = 4.0, student_temperature: Optional[float] = None,
            soft_scale: float = 1.0, reduction: str = "mean", ignore_index: int = -100, *,
            backend: str = "auto") -> torch.Tensor:
    """CE(y, softmax(s)) + lam * soft_scale * H(softmax(t/T), softmax(s/T_s)); see ``reference.kd_loss``."""
    dtype = _autocast_dtype(student_logits, low_precision=False)
    if dtype is not None:
        with torch.autocast(student_logits.device.type, enabled=False):
            return kd_loss(*_cast(dtype, student_logits, teacher_logits), target, temperature, lam,
                           student_temperature, soft_scale, reduction, ignore_index, backend=backend)
    _checks.kd_loss_args(student_logits, teacher_logits, target, temperature, lam, student_temperature,
                         soft_scale, reduction, ignore_index)
    fn = _backend.impl("kd_loss", backend, student_logits.device, student_logits.dtype)
    return fn(student_logits, teacher_logits, target, temperature, lam, student_temperature, soft_scale,
              reduction, ignore_index)
