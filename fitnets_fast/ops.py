"""Public functional API: the reference signatures, each call dispatched to the fastest backend.

Every function takes ``backend="auto"`` ("auto", "reference", "cpp", "triton"); see
``fitnets_fast._backend`` for how "auto" chooses and ``fitnets_fast.use_backend`` to force one. Arguments
are validated here once; shapes and semantics are documented on the twins in ``fitnets_fast.reference``.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _backend, _checks

__all__ = ["maxout", "maxout_conv2d", "maxout_linear", "hint_loss", "kd_loss"]

_backend.preload()


def maxout(x: torch.Tensor, pieces: int, *, backend: str = "auto") -> torch.Tensor:
    """Maxout over dim 1, ``(N, C*pieces, *rest) -> (N, C, *rest)``; see ``reference.maxout``."""
    _checks.maxout_input(x, pieces)
    return _backend.impl("maxout", backend, x.device, x.dtype)(x, pieces)


def maxout_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pieces: int,
                  stride: int = 1, padding: int = 0, *, backend: str = "auto") -> torch.Tensor:
    """Conv2d + maxout, ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``; see ``reference.maxout_conv2d``."""
    _checks.maxout_conv2d_args(x, weight, bias, pieces, stride, padding)
    return _backend.impl("maxout_conv2d", backend, x.device, x.dtype)(x, weight, bias, pieces, stride, padding)


def maxout_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pieces: int, *,
                  backend: str = "auto") -> torch.Tensor:
    """Linear + maxout, ``(N, in) -> (N, out)``; see ``reference.maxout_linear``."""
    _checks.maxout_linear_args(x, weight, bias, pieces)
    return _backend.impl("maxout_linear", backend, x.device, x.dtype)(x, weight, bias, pieces)


def hint_loss(guided: torch.Tensor, hint: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
              pieces: int, padding: int = 0, *, backend: str = "auto") -> torch.Tensor:
    """1/2 * sum (hint - maxout_conv2d(guided))^2 averaged over the batch; see ``reference.hint_loss``."""
    _checks.hint_loss_args(guided, hint, weight, bias, pieces, padding)
    return _backend.impl("hint_loss", backend, guided.device, guided.dtype)(guided, hint, weight, bias, pieces, padding)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
            temperature: float = 3.0, lam: float = 4.0, student_temperature: Optional[float] = None,
            soft_scale: float = 1.0, reduction: str = "mean", ignore_index: int = -100, *,
            backend: str = "auto") -> torch.Tensor:
    """CE(y, softmax(s)) + lam * soft_scale * H(softmax(t/T), softmax(s/T_s)); see ``reference.kd_loss``."""
    _checks.kd_loss_args(student_logits, teacher_logits, target, temperature, lam, student_temperature,
                         soft_scale, reduction, ignore_index)
    fn = _backend.impl("kd_loss", backend, student_logits.device, student_logits.dtype)
    return fn(student_logits, teacher_logits, target, temperature, lam, student_temperature, soft_scale,
              reduction, ignore_index)
