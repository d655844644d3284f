"""``nn.Module`` wrappers of the fused ops: arguments validated once, at construction.

* ``MaxoutConv2d``: conv + maxout (+ optional max-pooling, pylearn2's "layer output"), carrying the
  max-norm limit, initialisation range and learning-rate scale that the FitNets trainer applies.
* ``MaxoutLinear``: fully-connected maxout layer, same extras.
* ``HintLoss``: the FitNets regressor (a maxout conv) and the L2 hint loss in one module.
* ``KDLoss``: the knowledge-distillation loss with its settings.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from . import _backend, _checks, ops

__all__ = ["MaxoutConv2d", "MaxoutLinear", "HintLoss", "KDLoss", "renorm_rows_"]


@torch.no_grad()
def renorm_rows_(weights: List[torch.Tensor], limits: List[float]) -> None:
    """Max-norm projection in place: each row ``w[i]`` (one maxout piece's filter or column, all dims but
    the first) of each weight is rescaled to L2 norm at most its limit; rows within the limit are unchanged.
    Works for any memory format (channels_last included)."""
    if not weights:
        return
    norms = [torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())), keepdim=True) for w in weights]
    scale = torch._foreach_clamp_max(norms, limits)   # norm / norm = 1 exactly for rows within the limit
    torch._foreach_div_(scale, torch._foreach_clamp_min(norms, torch.finfo(weights[0].dtype).tiny))
    torch._foreach_mul_(weights, scale)


def _bias_storage(rows: int, bias_size: Tuple[int, ...]) -> torch.Tensor:
    """An uninitialised bias ``(rows, *bias_size)``. A per-location bias (``bias_size`` not empty) is stored
    with dim 0 innermost, strides ``(1, ..., rows)``: the memory order of a channels-last feature map's
    pixels, in which the C++ kernels read the bias and write its gradient. The forward then passes it
    without a permuted copy, and its gradient arrives in the parameter's own layout (no copy before it
    accumulates); shape and values are those of any ``(rows, *bias_size)`` tensor."""
    return torch.empty(*bias_size, rows).movedim(-1, 0)


class _MaxoutParams(nn.Module):
    """Weight ``(out*pieces, *fan_in_shape)`` and bias ``(out*pieces, *bias_size)`` with the FitNets extras
    (``bias_size=()``: one bias per weight row).

    ``max_norm``: after each optimizer step the trainer rescales each weight row (one piece's filter) to
    L2 norm at most ``max_norm`` (pylearn2's max_kernel_norm / max_col_norm); None means unconstrained.
    ``init_range``: weights start U(-init_range, init_range), biases at 0 (pylearn2's irange); None keeps
    PyTorch's default initialisation. ``lr_scale``: multiplier on the learning rate of this layer.
    """

    def __init__(self, out_features: int, pieces: int, fan_in_shape: Tuple[int, ...], bias: bool,
                 max_norm: Optional[float], init_range: Optional[float], lr_scale: float,
                 bias_size: Tuple[int, ...] = ()):
        super().__init__()
        self.out_features = _checks.positive_int("out_features", out_features)
        self.pieces = _checks.positive_int("pieces", pieces)
        if max_norm is not None:
            _checks.positive_float("max_norm", max_norm)
        if init_range is not None:
            _checks.positive_float("init_range", init_range)
        self.lr_scale = _checks.positive_float("lr_scale", lr_scale)
        self.max_norm = max_norm
        self.init_range = init_range
        self.weight = nn.Parameter(torch.empty(out_features * pieces, *fan_in_shape))
        self.bias = nn.Parameter(_bias_storage(out_features * pieces, bias_size)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init_range is None:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(self.weight[0].numel())
            if self.bias is not None:
                nn.init.uniform_(self.bias, -bound, bound)
        else:
            nn.init.uniform_(self.weight, -self.init_range, self.init_range)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def apply_max_norm(self) -> None:
        """Rescale each weight row to L2 norm <= max_norm (no-op when max_norm is None)."""
        if self.max_norm is not None:
            renorm_rows_([self.weight], [self.max_norm])


class MaxoutConv2d(_MaxoutParams):
    """Conv2d with ``out_channels*pieces`` filters, maxout over the pieces, then optional max-pooling.

    Input ``(N, in_channels, H, W)``; output ``(N, out_channels, H', W')`` where ``H'`` is the conv output
    size, pooled by ``pool=(size, stride)`` with ceil mode (cuda-convnet's geometry) when given.

    ``untied_bias=(H_conv, W_conv)`` gives each filter one bias per convolution-output location, bias
    ``(out_channels*pieces, H_conv, W_conv)`` (pylearn2's ``MaxoutConvC01B`` default, ``tied_b=False``); the
    layer then only accepts inputs whose convolution output is that size (the bias is stored with the filter
    dim innermost in memory, the fused kernels' order). None (default): one bias per filter.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, pieces: int = 2, *,
                 stride: int = 1, padding: int = 0, pool: Optional[Tuple[int, int]] = None, bias: bool = True,
                 untied_bias: Optional[Tuple[int, int]] = None, max_norm: Optional[float] = None,
                 init_range: Optional[float] = None, lr_scale: float = 1.0, backend: str = "auto"):
        k = _checks.positive_int("kernel_size", kernel_size)
        self.in_channels = _checks.positive_int("in_channels", in_channels)
        if untied_bias is not None:
            if not bias:
                raise ValueError("untied_bias needs bias=True")
            if not isinstance(untied_bias, (tuple, list)) or len(untied_bias) != 2:
                raise ValueError(f"untied_bias must be None or an (H_conv, W_conv) pair, got {untied_bias!r}")
            untied_bias = (_checks.positive_int("untied_bias height", untied_bias[0]),
                           _checks.positive_int("untied_bias width", untied_bias[1]))
        self.untied_bias = untied_bias
        super().__init__(out_channels, pieces, (in_channels, k, k), bias, max_norm, init_range, lr_scale,
                         untied_bias or ())
        self.kernel_size = k
        self.stride = _checks.positive_int("stride", stride)
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        self.padding = padding
        if pool is not None:
            pool = (_checks.positive_int("pool size", pool[0]), _checks.positive_int("pool stride", pool[1]))
        self.pool = pool
        self.backend = _backend.check_name(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.maxout_conv2d(x, self.weight, self.bias, self.pieces, self.stride, self.padding, self.pool,
                                 backend=self.backend)

    def extra_repr(self) -> str:
        untied = "" if self.untied_bias is None else f", untied_bias={self.untied_bias}"
        return (f"{self.in_channels}, {self.out_features}, kernel_size={self.kernel_size}, pieces={self.pieces}, "
                f"stride={self.stride}, padding={self.padding}, pool={self.pool}, max_norm={self.max_norm}{untied}")


class MaxoutLinear(_MaxoutParams):
    """Linear layer with ``out_features*pieces`` units and maxout over the pieces: ``(N, in) -> (N, out)``.

    With ``pieces=1`` it is a plain linear layer (e.g. the softmax layer's logits).
    """

    def __init__(self, in_features: int, out_features: int, pieces: int = 1, *, bias: bool = True,
                 max_norm: Optional[float] = None, init_range: Optional[float] = None, lr_scale: float = 1.0,
                 backend: str = "auto"):
        self.in_features = _checks.positive_int("in_features", in_features)
        super().__init__(out_features, pieces, (in_features,), bias, max_norm, init_range, lr_scale)
        self.backend = _backend.check_name(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.maxout_linear(x.flatten(1), self.weight, self.bias, self.pieces, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, pieces={self.pieces}, max_norm={self.max_norm}"


class HintLoss(MaxoutConv2d):
    """The FitNets regressor (a valid conv with the teacher hint layer's non-linearity) and Eq. 3's loss.

    ``forward(guided, hint)`` returns ``1/2 * sum (hint - r(guided))^2`` averaged over the batch, with
    ``guided (N, in_channels, Hg, Wg)`` and ``hint (N, out_channels, Hh, Wh)``,
    ``Hh = Hg - kernel_size + 1``, and ``r = act(conv2d(guided))``. ``activation``: "maxout" (over
    ``pieces``, default 2), "relu" or "none" (``pieces`` None or 1 for those two); checked here, at
    construction. ``untied_bias=(Hh, Wh)`` gives the regressor one bias per filter and hint location (as
    ``MaxoutConv2d``). Build one from shapes with ``fitnets_fast.models.build_regressor``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, pieces: Optional[int] = None, *,
                 activation: str = "maxout", untied_bias: Optional[Tuple[int, int]] = None,
                 max_norm: Optional[float] = 0.9, init_range: Optional[float] = 0.05, lr_scale: float = 1.0,
                 backend: str = "auto"):
        if activation == "maxout" and pieces is None:
            pieces = 2
        pieces = _checks.hint_activation(activation, pieces)
        super().__init__(in_channels, out_channels, kernel_size, pieces, untied_bias=untied_bias,
                         max_norm=max_norm, init_range=init_range, lr_scale=lr_scale, backend=backend)
        self.activation = activation

    def regress(self, guided: torch.Tensor) -> torch.Tensor:
        """The regressor output ``r(guided)``, ``(N, out_channels, Hh, Wh)``."""
        regressed = super().forward(guided)
        return torch.relu(regressed) if self.activation == "relu" else regressed

    def forward(self, guided: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return ops.hint_loss(guided, hint, self.weight, self.bias, self.pieces, self.padding,
                             activation=self.activation, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation!r}"


class KDLoss(nn.Module):
    """``kd_loss`` with its settings fixed at construction; ``forward(student_logits, teacher_logits, target)``.

    ``lam`` is an attribute so that a schedule can change it between epochs.
    """

    def __init__(self, temperature: float = 3.0, lam: float = 4.0, student_temperature: Optional[float] = None,
                 soft_scale: float = 1.0, reduction: str = "mean", ignore_index: int = -100, backend: str = "auto"):
        super().__init__()
        self.temperature = _checks.positive_float("temperature", temperature)
        self.student_temperature = (None if student_temperature is None
                                    else _checks.positive_float("student_temperature", student_temperature))
        if reduction not in _checks.REDUCTIONS:
            raise ValueError(f"reduction must be one of {_checks.REDUCTIONS}, got {reduction!r}")
        self.lam = _checks.nonnegative_float("lam", lam)
        self.soft_scale = _checks.nonnegative_float("soft_scale", soft_scale)
        self.reduction, self.ignore_index = reduction, ignore_index
        self.backend = _backend.check_name(backend)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ops.kd_loss(student_logits, teacher_logits, target, self.temperature, self.lam,
                           self.student_temperature, self.soft_scale, self.reduction, self.ignore_index,
                           backend=self.backend)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, lam={self.lam}, student_temperature={self.student_temperature}, "
                f"soft_scale={self.soft_scale}, reduction={self.reduction!r}")
