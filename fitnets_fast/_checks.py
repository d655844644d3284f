"""Argument validation shared by the reference ops, the public ops and the nn wrappers, and the debug checks.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape, range or
value) with a message that names the argument and says what was expected. Checks read only shapes, dtypes
and Python numbers, never tensor values, except:

* the KD label range (the labels' min and max), which runs on CPU tensors (where it is cheap) and, on other
  devices, where it would make the host wait for the device every call, only under the debug checks
  (a data set's labels are checked once, where it is loaded: ``labels(..., always=True)``);
* the debug checks (``set_checks(True)``, or ``FITNETS_FAST_CHECKS=1`` in the environment; off by default),
  which also count the NaN/inf values of every floating input of the public ops and name the input.

Value checks are skipped while ``torch.compile`` traces, so compiled graphs stay whole.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch

REDUCTIONS = ("mean", "sum", "none")
_CHECKS_ENV = "FITNETS_FAST_CHECKS"


def _checks_from_env() -> bool:
    value = os.environ.get(_CHECKS_ENV, "0").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"{_CHECKS_ENV} must be 1 (debug checks on) or 0 (off, the default), got {value!r}")
    return value == "1"


# A plain global, read once at import (torch.compile traces it as a constant).
_debug = {"on": _checks_from_env()}


def set_checks(enabled: bool) -> None:
    """Turn the ops' debug checks on or off (default: off, or on with ``FITNETS_FAST_CHECKS=1``).

    When on, every public op first counts the NaN/inf values of each floating input and raises ValueError
    naming it (e.g. "kd_loss: teacher_logits has 3 NaN/inf values"), and ``kd_loss`` checks the label
    range on every device. Each costs a pass over the input and a device-to-host synchronisation: for
    debugging, not for training speed.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"set_checks takes True or False, got {enabled!r}")
    _debug["on"] = enabled


def checks_enabled() -> bool:
    """Whether the debug checks are on (see ``set_checks``)."""
    return _debug["on"]


def all_finite(op: str, **tensors: Optional[torch.Tensor]) -> None:
    """Under the debug checks (outside ``torch.compile``): ValueError naming the first input with NaN/inf."""
    if not _debug["on"] or torch.compiler.is_compiling():
        return
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise ValueError(f"{op}: {name} has {bad} NaN/inf values")


def tensor(name: str, value, *, floating: bool = True) -> torch.Tensor:
    """Check that ``value`` is a tensor (a floating one unless ``floating=False``)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def rank(name: str, value: torch.Tensor, expected, what: str) -> None:
    """Check ``value.dim()`` is ``expected`` (an int or a tuple of allowed ints)."""
    allowed = (expected,) if isinstance(expected, int) else tuple(expected)
    if value.dim() not in allowed:
        want = " or ".join(str(a) for a in allowed)
        raise ValueError(f"{name} must be {want}-D ({what}), got shape {tuple(value.shape)}")


def same_device(**tensors: Optional[torch.Tensor]) -> None:
    """Check that all given (non-None) tensors live on one device (ValueError)."""
    _all_equal("device", ValueError, tensors)


def same_dtype(**tensors: Optional[torch.Tensor]) -> None:
    """Check that all given (non-None) tensors share one dtype (TypeError)."""
    _all_equal("dtype", TypeError, tensors)


def _all_equal(attribute: str, error: type, tensors: dict) -> None:
    present = {k: getattr(v, attribute) for k, v in tensors.items() if v is not None}
    if len(set(present.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in present.items())
        raise error(f"all tensors must share one {attribute}, got {listing}")


def first_order_only(op: str, backend: str) -> None:
    """Called first in a fused backward: grad mode is on there only for ``backward(create_graph=True)``,
    whose second-order terms the fused backwards (written with saved, non-differentiable buffers) would
    silently get wrong, so refuse it, naming the op and what to do."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{op}: the {backend} backend has no second-order gradients (backward with create_graph=True); "
            f'run it with backend="reference" (or inside fitnets_fast.use_backend("reference")) for double backward'
        )


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def nonnegative_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def pieces_divide(name: str, channels: int, pieces: int) -> None:
    positive_int("pieces", pieces)
    if channels % pieces:
        raise ValueError(f"{name} has {channels} channels, which is not divisible by pieces={pieces}")


def maxout_input(x, pieces: int) -> None:
    tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dims (N, C, ...), got shape {tuple(x.shape)}")
    pieces_divide("x", x.shape[1], pieces)


def _maxout_layer_args(x, weight, bias, pieces, dims: int, x_layout: str, weight_layout: str,
                       inputs: str) -> None:
    """What the maxout conv and linear layers check alike: tensors of ``dims`` dims, ``pieces`` dividing the
    weight's rows, ``x``'s dim 1 matching the weight's (``inputs`` names it), the bias, one device, one dtype."""
    for name, value in (("x", x), ("weight", weight)):
        tensor(name, value)
    rank("x", x, dims, x_layout)
    rank("weight", weight, dims, weight_layout)
    pieces_divide("weight", weight.shape[0], pieces)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[1]} {inputs} but weight expects {weight.shape[1]}")
    _bias(bias, weight.shape[0])
    same_device(x=x, weight=weight, bias=bias)
    same_dtype(x=x, weight=weight, bias=bias)


def maxout_conv2d_args(x, weight, bias, pieces, stride, padding, pool=None) -> None:
    """The maxout conv layer's arguments; its bias may be tied ``(C_out*pieces,)`` or untied
    ``(C_out*pieces, H_conv, W_conv)`` (the convolution output's size, before pooling)."""
    untied = isinstance(bias, torch.Tensor) and bias.dim() == 3
    _maxout_layer_args(x, weight, None if untied else bias, pieces, 4, "N x C_in x H x W",
                       "C_out*pieces x C_in x kH x kW", "input channels")
    _conv_geometry(x, weight, stride, padding)
    out_size = [(x.shape[d] + 2 * padding - weight.shape[d]) // stride + 1 for d in (2, 3)]
    if untied:
        expected = (weight.shape[0], *out_size)
        if tuple(bias.shape) != expected:
            raise ValueError(f"an untied bias must have shape {expected} (one per weight row and convolution-"
                             f"output location), got {tuple(bias.shape)}")
        same_device(x=x, bias=bias)
        same_dtype(x=x, bias=bias)
    if pool is not None:
        _pool(pool, out_size)


def _pool(pool, conv_output_size) -> None:
    if not isinstance(pool, (tuple, list)) or len(pool) != 2:
        raise ValueError(f"pool must be None or a (size, stride) pair, got {pool!r}")
    positive_int("pool size", pool[0])
    positive_int("pool stride", pool[1])
    if pool[0] > min(conv_output_size):
        raise ValueError(f"pool size {pool[0]} is larger than the {conv_output_size[0]}x{conv_output_size[1]} "
                         "convolution output")


def maxout_linear_args(x, weight, bias, pieces) -> None:
    _maxout_layer_args(x, weight, bias, pieces, 2, "N x in_features", "out_features*pieces x in_features",
                       "features")


HINT_ACTIVATIONS = ("maxout", "relu", "none")


def hint_activation(activation, pieces) -> int:
    """Check ``hint_loss``'s ``activation`` and ``pieces``; return the pieces the regressor's weight has
    (``pieces`` for "maxout", where it is required; 1 for "relu" and "none", which take None or 1)."""
    if activation not in HINT_ACTIVATIONS:
        raise ValueError(f"activation must be one of {HINT_ACTIVATIONS}, got {activation!r}")
    if activation == "maxout":
        if pieces is None:
            raise ValueError('activation="maxout" needs pieces (a positive int: the teacher hint layer\'s pieces)')
        return positive_int("pieces", pieces)
    if pieces is not None and pieces != 1:
        raise ValueError(f"activation={activation!r} takes pieces=None or 1 (pieces are for maxout), got {pieces!r}")
    return 1


def hint_loss_args(guided, hint, weight, bias, pieces, padding, activation="maxout") -> int:
    """Check ``hint_loss``'s arguments; return the regressor's pieces (see ``hint_activation``)."""
    pieces = hint_activation(activation, pieces)
    maxout_conv2d_args(guided, weight, bias, pieces, 1, padding)
    tensor("hint", hint)
    rank("hint", hint, 4, "N x C_hint x H_hint x W_hint")
    same_device(guided=guided, hint=hint)
    same_dtype(guided=guided, hint=hint)
    if hint.shape[0] != guided.shape[0]:
        raise ValueError(f"batch size mismatch: guided has {guided.shape[0]} rows, hint has {hint.shape[0]}")
    if guided.shape[0] == 0:
        raise ValueError("hint_loss got an empty batch (guided has 0 rows); the loss is a mean over the batch")
    k_h, k_w = weight.shape[2:]
    out_h = guided.shape[2] + 2 * padding - k_h + 1
    out_w = guided.shape[3] + 2 * padding - k_w + 1
    expected = (weight.shape[0] // pieces, out_h, out_w)
    if tuple(hint.shape[1:]) != expected:
        raise ValueError(
            f"the regressor maps guided {tuple(guided.shape[1:])} to {expected} (C x H x W), "
            f"but hint has {tuple(hint.shape[1:])}"
        )
    return pieces


def kd_loss_args(student_logits, teacher_logits, target, temperature, lam, student_temperature,
                 soft_scale, reduction, ignore_index) -> None:
    tensor("student_logits", student_logits)
    tensor("teacher_logits", teacher_logits)
    rank("student_logits", student_logits, 2, "N x num_classes")
    rank("teacher_logits", teacher_logits, 2, "N x num_classes")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} must equal "
            f"student_logits shape {tuple(student_logits.shape)}"
        )
    if student_logits.shape[1] < 2:
        raise ValueError(f"student_logits needs at least 2 classes, got shape {tuple(student_logits.shape)}")
    tensor("target", target, floating=False)
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"target must be an integer (class index) tensor, got dtype {target.dtype}")
    rank("target", target, 1, "N class indices")
    if target.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"batch size mismatch: student_logits has {student_logits.shape[0]} rows, target has {target.shape[0]}"
        )
    if target.shape[0] == 0:
        raise ValueError("kd_loss got an empty batch (student_logits has 0 rows)")
    same_device(student_logits=student_logits, teacher_logits=teacher_logits, target=target)
    same_dtype(student_logits=student_logits, teacher_logits=teacher_logits)
    positive_float("temperature", temperature)
    if student_temperature is not None:
        positive_float("student_temperature", student_temperature)
    nonnegative_float("lam", lam)
    nonnegative_float("soft_scale", soft_scale)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    labels(target, student_logits.shape[1], ignore_index)


def labels(target: torch.Tensor, num_classes: int, ignore_index: int = -100, *, always: bool = False) -> None:
    """Check every label is in [0, num_classes) or equals ``ignore_index``. Runs for CPU tensors, under the
    debug checks, or with ``always`` (a once-per-data-set check); never under torch.compile."""
    if target.numel() == 0 or torch.compiler.is_compiling():
        return
    if not (always or _debug["on"] or target.device.type == "cpu"):
        return
    low, high = (int(v) for v in torch.aminmax(target.masked_fill(target == ignore_index, 0)))
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"target values must be in [0, {num_classes}) or equal ignore_index={ignore_index}, "
            f"got min {low} and max {high}"
        )


def _bias(bias, channels: int) -> None:
    if bias is None:
        return
    tensor("bias", bias)
    if tuple(bias.shape) != (channels,):
        raise ValueError(f"bias must have shape ({channels},) (one per weight row), got {tuple(bias.shape)}")


def _conv_geometry(x, weight, stride, padding) -> None:
    positive_int("stride", stride)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    for dim, name in ((2, "height"), (3, "width")):
        if x.shape[dim] + 2 * padding < weight.shape[dim]:
            raise ValueError(
                f"x {name} {x.shape[dim]} with padding {padding} is smaller than the kernel {name} {weight.shape[dim]}"
            )
