"""Argument validation shared by the reference ops, the public ops and the nn wrappers.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape, range or
value) with a message that names the argument and says what was expected. Checks that would need a device
synchronisation (label range) are skipped while ``torch.compile`` traces, so compiled graphs stay whole.
"""
from __future__ import annotations

from typing import Optional

import torch

REDUCTIONS = ("mean", "sum", "none")


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


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
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


def hint_loss_args(guided, hint, weight, bias, pieces, padding) -> None:
    maxout_conv2d_args(guided, weight, bias, pieces, 1, padding)
    tensor("hint", hint)
    rank("hint", hint, 4, "N x C_hint x H_hint x W_hint")
    same_device(guided=guided, hint=hint)
    same_dtype(guided=guided, hint=hint)
    if hint.shape[0] != guided.shape[0]:
        raise ValueError(f"batch size mismatch: guided has {guided.shape[0]} rows, hint has {hint.shape[0]}")
    k_h, k_w = weight.shape[2:]
    out_h = guided.shape[2] + 2 * padding - k_h + 1
    out_w = guided.shape[3] + 2 * padding - k_w + 1
    expected = (weight.shape[0] // pieces, out_h, out_w)
    if tuple(hint.shape[1:]) != expected:
        raise ValueError(
            f"the regressor maps guided {tuple(guided.shape[1:])} to {expected} (C x H x W), "
            f"but hint has {tuple(hint.shape[1:])}"
        )


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
    same_device(student_logits=student_logits, teacher_logits=teacher_logits, target=target)
    same_dtype(student_logits=student_logits, teacher_logits=teacher_logits)
    positive_float("temperature", temperature)
    if student_temperature is not None:
        positive_float("student_temperature", student_temperature)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
        raise ValueError(f"lam must be a non-negative number, got {lam!r}")
    if isinstance(soft_scale, bool) or not isinstance(soft_scale, (int, float)) or soft_scale < 0:
        raise ValueError(f"soft_scale must be a non-negative number, got {soft_scale!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    labels(target, student_logits.shape[1], ignore_index)


def labels(target: torch.Tensor, num_classes: int, ignore_index: int = -100) -> None:
    """Check every label is in [0, num_classes) or equals ``ignore_index`` (skipped under torch.compile)."""
    if target.numel() == 0 or torch.compiler.is_compiling():
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
