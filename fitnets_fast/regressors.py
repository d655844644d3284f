"""Regressors from a student's guided map to a teacher's hint map, each with its hint loss.

Every regressor here is an ``nn.Module`` whose ``forward(guided, hint)`` returns the FitNets hint loss
(paper Eq. 3): ``1/2 * sum over C*H*W of (hint - r(guided))^2``, averaged over the batch, with ``guided``
``(N, C_g, H_g, W_g)`` and ``hint`` ``(N, C_h, H_h, W_h)``; ``regress(guided)`` gives ``r(guided)``.

* ``paper``: the paper's regressor, a valid convolution with kernel ``N_g - N_h + 1`` per spatial dim
  followed by the teacher hint layer's non-linearity (``hint_activation``), fused with the loss
  (``fitnets_fast.nn.HintLoss``).
* ``conv_bn_relu``: RepDistiller's / torchdistill's regressor: a 1x1 conv when the maps are equal, a 3x3
  stride-2 conv when the student map is twice the teacher's, a 4x4 stride-2 transposed conv when it is
  half, a valid conv of kernel ``N_g - N_h + 1`` when larger otherwise; then BatchNorm and ReLU.
* any ``nn.Module`` mapping the guided map to the hint map's shape (``HintRegression`` adds the loss).
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn as nn

from . import models as _models
from .nn import HintLoss, MaxoutConv2d, MaxoutLinear

__all__ = ["hint_activation", "paper", "conv_bn_relu", "HintRegression", "build", "REGRESSORS"]

REGRESSORS = ("paper", "conv_bn_relu")
Shape = Tuple[int, ...]


def hint_activation(module: nn.Module) -> Tuple[str, int]:
    """``(activation, pieces)`` of the teacher hint module: ``("maxout", pieces)`` for one of our maxout
    layers, ``("relu", 1)`` when it is, or ends with, a ReLU (its last submodule in registration order),
    ``("none", 1)`` otherwise."""
    if isinstance(module, (MaxoutConv2d, MaxoutLinear)):
        return "maxout", module.pieces
    last = list(module.modules())[-1]
    if isinstance(last, nn.ReLU) or isinstance(module, nn.ReLU):
        return "relu", 1
    return "none", 1


def _map_shape(name: str, shape: Shape) -> Shape:
    if len(shape) != 3:
        raise ValueError(f"hints need convolutional maps (C, H, W); the {name} map is {tuple(shape)}")
    return tuple(shape)


def paper(hint_module: nn.Module, hint_shape: Shape, guided_shape: Shape, *, backend: str = "auto") -> HintLoss:
    """The paper's regressor for these ``(C, H, W)`` shapes with the non-linearity of ``hint_module``.
    Raises ``ValueError`` (suggesting ``conv_bn_relu``) when the teacher map is larger than the student's or
    the kernel would not be square."""
    hint, guided = _map_shape("hint", hint_shape), _map_shape("guided", guided_shape)
    activation, pieces = hint_activation(hint_module)
    # Untied biases when the hint layer's are (the released code copies the hint layer's tied_b).
    untied = activation == "maxout" and getattr(hint_module, "untied_bias", None) is not None
    try:
        return _models.build_regressor(hint, guided, pieces if activation == "maxout" else None,
                                       activation=activation, untied_bias=untied, backend=backend)
    except ValueError as exc:
        raise ValueError(f"{exc}; or use regressor='conv_bn_relu' (a transposed conv for a map half the size)") \
            from None


class HintRegression(nn.Module):
    """``module`` (guided map -> hint-shaped map) with the hint loss: ``forward(guided, hint)`` is Eq. 3's
    ``1/2 * sum (hint - module(guided))^2`` averaged over the batch."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def regress(self, guided: torch.Tensor) -> torch.Tensor:
        return self.module(guided)

    def forward(self, guided: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        out = self.module(guided)
        if out.shape != hint.shape:
            raise ValueError(f"the regressor maps the guided map {tuple(guided.shape)} to {tuple(out.shape)}, "
                             f"but the hint map is {tuple(hint.shape)}")
        return 0.5 * (hint.float() - out.float()).square().sum() / guided.shape[0]


def conv_bn_relu(hint_shape: Shape, guided_shape: Shape) -> nn.Sequential:
    """RepDistiller's ``ConvReg`` (see the module doc) for ``(C, H, W)`` shapes, as an ``nn.Sequential``
    (conv, BatchNorm2d, ReLU). Raises ``ValueError`` for a smaller student map that is not half the hint's."""
    (ch, hh, wh), (cg, hg, wg) = _map_shape("hint", hint_shape), _map_shape("guided", guided_shape)
    if hg == 2 * hh and wg == 2 * wh:
        conv: nn.Module = nn.Conv2d(cg, ch, 3, stride=2, padding=1)
    elif 2 * hg == hh and 2 * wg == wh:
        conv = nn.ConvTranspose2d(cg, ch, 4, stride=2, padding=1)
    elif hg >= hh and wg >= wh:
        conv = nn.Conv2d(cg, ch, (hg - hh + 1, wg - wh + 1))
    else:
        raise ValueError(f"conv_bn_relu maps a student map to a teacher map of equal, half or (valid conv) "
                         f"smaller size, or twice the size; got guided {hg}x{wg}, hint {hh}x{wh}")
    return nn.Sequential(conv, nn.BatchNorm2d(ch), nn.ReLU())


def build(kind: Union[str, nn.Module], hint_module: nn.Module, hint_shape: Shape, guided_shape: Shape, *,
          backend: str = "auto") -> Tuple[nn.Module, str]:
    """``(regressor with its loss, description)`` for ``kind`` ("paper", "conv_bn_relu" or a module)."""
    if isinstance(kind, nn.Module):
        return (kind if isinstance(kind, (HintLoss, HintRegression)) else HintRegression(kind),
                f"custom: {type(kind).__name__}")
    if kind == "paper":
        reg = paper(hint_module, hint_shape, guided_shape, backend=backend)
        act = hint_activation(hint_module)
        desc = f"paper: {reg.kernel_size}x{reg.kernel_size} valid conv, {act[0]}" + (
            f" ({act[1]} pieces)" if act[0] == "maxout" else "")
        return reg, desc
    if kind == "conv_bn_relu":
        seq = conv_bn_relu(hint_shape, guided_shape)
        return HintRegression(seq), f"conv_bn_relu: {seq[0]}"
    raise ValueError(f"regressor must be one of {REGRESSORS} or an nn.Module, got {kind!r}")
