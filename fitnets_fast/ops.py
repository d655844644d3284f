"""Public functional API: the reference signatures, each call dispatched to the fastest backend.

Every function takes ``backend="auto"`` ("auto", "reference", "cpp", "triton"); see
``fitnets_fast._backend`` for how "auto" chooses and ``fitnets_fast.use_backend`` to force one, and
``backend_used(op, *args, **kwargs)`` for the backend a call would run on (a backend named explicitly that
cannot run it raises ValueError saying why). Arguments are validated here once; shapes and semantics are
documented on the twins in ``fitnets_fast.reference``.

Under ``torch.autocast`` the ops follow PyTorch's policy for their aten counterparts: ``maxout_conv2d`` and
``maxout_linear`` (like conv2d / linear) run in the autocast dtype, ``hint_loss`` and ``kd_loss`` (like
mse_loss / cross_entropy) in float32, ``maxout`` in its input's dtype; the backend then runs with autocast off.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _backend, _checks

__all__ = ["maxout", "maxout_conv2d", "maxout_linear", "hint_loss", "kd_loss", "backend_used"]

_backend.preload()


def _autocast_dtype(x, low_precision: bool) -> Optional[torch.dtype]:
    """The dtype an op on tensor ``x`` runs in under ``torch.autocast`` on ``x``'s device type (the autocast
    dtype when ``low_precision``, else float32), or None when autocast is off there (or ``x`` is no tensor)."""
    if not isinstance(x, torch.Tensor) or not torch.is_autocast_enabled(x.device.type):
        return None
    return torch.get_autocast_dtype(x.device.type) if low_precision else torch.float32


def _cast(dtype: Optional[torch.dtype], *values):
    """``values`` with each floating-point tensor cast to ``dtype`` (all unchanged for None; anything else is
    left to the checks)."""
    if dtype is None:
        return values
    return tuple(v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in values)


def _run(op: str, backend: str, inputs: tuple):
    """Run ``<op>_impl`` of the backend dispatch picks on the checked ``inputs``, with autocast off."""
    fn = _backend.impl(op, backend, inputs)
    device_type = inputs[0].device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return fn(*inputs)
    return fn(*inputs)


# Each ``_<op>_inputs`` takes the public op's arguments and returns the checked positional inputs of
# ``<op>_impl``, cast to the dtype autocast asks for.
def _maxout_inputs(x, pieces):
    _checks.maxout_input(x, pieces)
    _checks.all_finite("maxout", x=x)
    return x, pieces


def _maxout_conv2d_inputs(x, weight, bias, pieces, stride=1, padding=0, pool=None):
    x, weight, bias = _cast(_autocast_dtype(x, low_precision=True), x, weight, bias)
    _checks.maxout_conv2d_args(x, weight, bias, pieces, stride, padding, pool)
    _checks.all_finite("maxout_conv2d", x=x, weight=weight, bias=bias)
    return x, weight, bias, pieces, stride, padding, None if pool is None else tuple(pool)


def _maxout_linear_inputs(x, weight, bias, pieces):
    x, weight, bias = _cast(_autocast_dtype(x, low_precision=True), x, weight, bias)
    _checks.maxout_linear_args(x, weight, bias, pieces)
    _checks.all_finite("maxout_linear", x=x, weight=weight, bias=bias)
    return x, weight, bias, pieces


def _hint_loss_inputs(guided, hint, weight, bias, pieces=None, padding=0, *, activation="maxout"):
    guided, hint, weight, bias = _cast(_autocast_dtype(guided, low_precision=False), guided, hint, weight, bias)
    pieces = _checks.hint_loss_args(guided, hint, weight, bias, pieces, padding, activation)
    _checks.all_finite("hint_loss", guided=guided, hint=hint, weight=weight, bias=bias)
    return guided, hint, weight, bias, pieces, padding, activation


def _kd_loss_inputs(student_logits, teacher_logits, target, temperature=3.0, lam=4.0, student_temperature=None,
                    soft_scale=1.0, reduction="mean", ignore_index=-100):
    student_logits, teacher_logits = _cast(_autocast_dtype(student_logits, low_precision=False), student_logits,
                                           teacher_logits)
    _checks.kd_loss_args(student_logits, teacher_logits, target, temperature, lam, student_temperature,
                         soft_scale, reduction, ignore_index)
    _checks.all_finite("kd_loss", student_logits=student_logits, teacher_logits=teacher_logits)
    return (student_logits, teacher_logits, target, temperature, lam, student_temperature, soft_scale, reduction,
            ignore_index)


_INPUTS = {"maxout": _maxout_inputs, "maxout_conv2d": _maxout_conv2d_inputs, "maxout_linear": _maxout_linear_inputs,
           "hint_loss": _hint_loss_inputs, "kd_loss": _kd_loss_inputs}


def backend_used(op: str, *args, backend: str = "auto", **kwargs) -> str:
    """The backend (``"reference"``, ``"cpp"`` or ``"triton"``) that ``ops.<op>(*args, **kwargs,
    backend=backend)`` runs on, without running it: arguments are checked as the op checks them, and a
    backend named explicitly that cannot run the call raises the op's ValueError."""
    if op not in _INPUTS:
        raise ValueError(f"op must be one of {tuple(_INPUTS)}, got {op!r}")
    return _backend.resolve(op, backend, _INPUTS[op](*args, **kwargs))


def maxout(x: torch.Tensor, pieces: int, *, backend: str = "auto") -> torch.Tensor:
    """Maxout over dim 1, ``(N, C*pieces, *rest) -> (N, C, *rest)``; see ``reference.maxout``."""
    return _run("maxout", backend, _maxout_inputs(x, pieces))


def maxout_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pieces: int,
                  stride: int = 1, padding: int = 0, pool: Optional[Tuple[int, int]] = None, *,
                  backend: str = "auto") -> torch.Tensor:
    """Conv2d + maxout (+ max-pooling ``pool=(size, stride)``, ceil mode), ``(N, C_in, H, W) -> (N, C_out, H', W')``;
    see ``reference.maxout_conv2d``."""
    return _run("maxout_conv2d", backend, _maxout_conv2d_inputs(x, weight, bias, pieces, stride, padding, pool))


def maxout_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pieces: int, *,
                  backend: str = "auto") -> torch.Tensor:
    """Linear + maxout, ``(N, in) -> (N, out)``; see ``reference.maxout_linear``."""
    return _run("maxout_linear", backend, _maxout_linear_inputs(x, weight, bias, pieces))


def hint_loss(guided: torch.Tensor, hint: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
              pieces: Optional[int] = None, padding: int = 0, *, activation: str = "maxout",
              backend: str = "auto") -> torch.Tensor:
    """1/2 * sum (hint - act(conv2d(guided)))^2 averaged over the batch, act = maxout over ``pieces``, ReLU
    or none (``activation``); an empty batch is a ValueError. See ``reference.hint_loss``."""
    return _run("hint_loss", backend, _hint_loss_inputs(guided, hint, weight, bias, pieces, padding,
                                                        activation=activation))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
            temperature: float = 3.0, lam: float = 4.0, student_temperature: Optional[float] = None,
            soft_scale: float = 1.0, reduction: str = "mean", ignore_index: int = -100, *,
            backend: str = "auto") -> torch.Tensor:
    """CE(y, softmax(s)) + lam * soft_scale * H(softmax(t/T), softmax(s/T_s)); an empty batch is a ValueError.
    See ``reference.kd_loss``."""
    return _run("kd_loss", backend, _kd_loss_inputs(student_logits, teacher_logits, target, temperature, lam,
                                                    student_temperature, soft_scale, reduction, ignore_index))
