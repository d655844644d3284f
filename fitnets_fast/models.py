"""Every network of the FitNets paper (plus two small ones for the 8x8 digits preset), built from tables,
and the CIFAR ResNets of :mod:`fitnets_fast.resnet`.

``build(name, num_classes=10, **options)`` returns a ``MaxoutNet`` (or a ``CifarResNet`` for the ResNet names
``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``); ``names()`` lists the names. Each maxout
architecture is an ``Arch``: a tuple of hidden-layer specs (``Conv``, ``Dense``) plus the settings the
trainer applies (initialisation range, max-norm limits, learning-rate scales, dropout, default hint or
guided layer). A softmax layer ``y`` (``MaxoutLinear(pieces=1)``, giving logits) always ends the net.

Geometry follows pylearn2 (cuda-convnet): a layer's output is post-maxout and post-pooling; pooling uses
ceil-mode sizes, so the CIFAR teacher's hint is 7x7x192 and FitNet 4's guided layer 8x8x80. Layer names
are ``h0, h1, ...`` for convolutions, ``fc`` for the fully-connected maxout layer and ``y`` for the
softmax layer. Shapes are ``(C, H, W)`` tuples, batch excluded.

Names (``[P]`` paper, ``[C]`` released code, ``[PL2]`` pylearn2 yaml; see the reference doc):

* ``teacher_cifar``: Goodfellow et al.'s maxout net, exactly the pylearn2 cifar10.yaml [PL2]. Hint h1.
* ``fitnet1`` ... ``fitnet4``: Table 7 [P]; the guided layer is the last conv of block 2 (8x8 output).
* ``depth{5,7,9,11}_{30m,107m}``: Table 6 [P] with its hint column (so ``depth11_30m`` equals ``fitnet1``
  but is guided at the 7th layer, as Table 6 says, where Table 7 says the 6th; D8).
* ``teacher_mnist``: pylearn2 mnist.yaml geometry with 2 pieces everywhere, as the paper text says
  (360,816 weights = the paper's ~361K). ``teacher_mnist_code``: the yaml as released (4 pieces in h2).
* ``fitnet_mnist``: the released yaml geometry with 2 pieces everywhere, as the paper text says (29,944
  weights = ~30K). ``fitnet_mnist_code``: the yaml as released (4 pieces in h4-h5). Both guided at h3.
  All four MNIST nets have untied biases (one per filter and convolution-output location), as pylearn2's
  ``MaxoutConvC01B`` default ``tied_b=False``, which both yamls keep; the softmax layer's bias is one per class.
* ``teacher_svhn``: pylearn2 svhn.yaml [PL2]. Hint h1 (10x10x128, the teacher's middle layer).
* ``fitnet_svhn``: the paper text's "13-layer FitNet, 11 maxout conv layers" (D5), read as the only
  13-layer FitNet of Table 7, FitNet 3 (1.70M weights; paper ~1.5M). ``fitnet_svhn_fitnet4``: the
  appendix's reading, FitNet 4. The SVHN hint (10x10) is larger than every map after block 2's pool
  (8x8), so both are guided at their middle layer inside block 2 (16x16x80: the 7th of 13, the 10th of
  19 layers), which gives a 7x7 regressor; the paper does not say which layer it used.
* ``teacher_digits`` / ``fitnet_digits``: small nets for sklearn's 8x8 digits (input 1x8x8), not from the
  paper: a wide 4-layer teacher (hint h1, 4x4x32; 85K parameters) and a thin, deep 17-layer student (15
  maxout convs of 4 to 8 channels; guided h8, 4x4x6, so a 1x1 regressor; 10.7K parameters, 0.58x the
  teacher's multiplications): deep and thin enough that backprop alone trains it less well, the regime
  where the paper's hints matter (see the README's table over seeds). They use PyTorch's default initialisation (``init_range=None``: U(+-0.005) leaves a deep
  net's signal vanishingly small for a short run) and learning-rate scale 1 everywhere; max-norm limits
  as the CIFAR FitNets. The teacher drops 0.1 of its input and 0.25 of later layers' inputs (the usual
  ``1/(1-p)`` rescaling): lighter than the paper teachers' 0.2 / 0.5, chosen for short runs.

Hyperparameters carried by each layer (``init_range``, ``max_norm``, ``lr_scale``) follow the reference
doc: CIFAR/SVHN FitNets init U(-0.005, 0.005), conv lr scale 0.05 (FC and softmax 1), max-norm conv 0.9,
FC 1.9, softmax 1.9365 [C]; the teachers and the MNIST nets as their yamls (the MNIST yamls set no lr
scale, so 1). Teachers carry the yamls' dropout (drop 0.2 on the input of h0, which pylearn2 does not
rescale, ``input_scales: {h0: 1}``; drop 0.5 with the usual 2x rescaling on every later layer's input).

Counts (``count_params``, ``count_mults``) use the authors' convention (``computeNumberParams.py``,
``computeNumberMult.py``): weights only, maxout pieces counted, conv multiplications on the pre-pool
(detector) map, fully-connected layers one multiplication per weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from . import _backend, _checks, reference, resnet
from .nn import HintLoss, MaxoutConv2d, MaxoutLinear

__all__ = ["Conv", "Dense", "Arch", "MaxoutNet", "build", "names", "arch", "build_regressor",
           "count_params", "count_mults"]

Shape = Tuple[int, ...]
_FROM_SPEC = object()      # default of MaxoutNet's init_range: use the architecture's


# ---------------------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Conv:
    """A maxout conv layer: ``channels`` outputs of ``pieces`` pieces, square ``kernel``, zero ``pad``,
    stride 1, then max-pooling ``pool=(size, stride)`` (ceil mode) when given; ``max_norm`` per filter."""

    channels: int
    kernel: int = 3
    pad: int = 1
    pieces: int = 2
    pool: Optional[Tuple[int, int]] = None
    max_norm: Optional[float] = 0.9


@dataclass(frozen=True)
class Dense:
    """A fully-connected maxout layer (flattens its input): ``units`` outputs of ``pieces`` pieces."""

    units: int
    pieces: int = 5
    max_norm: Optional[float] = 1.9


@dataclass(frozen=True)
class Arch:
    """One architecture: hidden layers in order (the softmax layer is appended by the builder) and the
    settings carried by its layers.

    ``init_range``: weights U(-r, r), biases 0 (None: PyTorch's default init). ``untied_biases``: every conv
    has one bias per filter and output location (pylearn2's ``tied_b=False``), else one per filter. ``conv_lr_scale``: learning
    rate multiplier of the conv layers (FC and softmax use 1). ``dropout``: drop probability on the input
    of the first layer and on the input of every later layer; ``first_input_scale``: the multiplier of the
    kept first-layer inputs (None: the usual ``1/(1-p)``). ``hint_layer`` / ``guided_layer``: the paper's
    default layer index (0-based) for a teacher / a student.
    """

    input_shape: Shape
    hidden: Tuple[Union[Conv, Dense], ...]
    softmax_max_norm: Optional[float] = 1.9365
    init_range: Optional[float] = 0.005
    untied_biases: bool = False
    conv_lr_scale: float = 1.0
    dropout: Tuple[float, float] = (0.0, 0.0)
    first_input_scale: Optional[float] = None
    hint_layer: Optional[int] = None
    guided_layer: Optional[int] = None


# ---------------------------------------------------------------------------------------------------------
# The architectures
# ---------------------------------------------------------------------------------------------------------

CIFAR_INPUT = (3, 32, 32)
MNIST_INPUT = (1, 28, 28)
DIGITS_INPUT = (1, 8, 8)
_TEACHER_DROPOUT = dict(dropout=(0.2, 0.5), first_input_scale=1.0)   # pylearn2 include 0.8 (unscaled) / 0.5


def _fitnet(blocks: Sequence[Sequence[int]], guided: int, input_shape: Shape = CIFAR_INPUT) -> Arch:
    """The FitNet template of Tables 6 and 7: three blocks of 3x3 pad-1 maxout(2) convs, a 2x2/2 pool after
    blocks 1 and 2 and a global pool after block 3, then fc (maxout 500x5) and softmax.

    ``guided`` is the paper's 1-based layer number (the left side of "hint g <- h").
    """
    side = input_shape[1] // 4                              # the map size entering block 3
    pools = ((2, 2), (2, 2), (side, 1))
    convs = tuple(Conv(c, pool=pools[b] if i == len(block) - 1 else None)
                  for b, block in enumerate(blocks) for i, c in enumerate(block))
    return Arch(input_shape, convs + (Dense(500, 5),), conv_lr_scale=0.05, guided_layer=guided - 1)


def _teacher_mnist(h2_pieces: int) -> Arch:
    return Arch(MNIST_INPUT, (Conv(48, 8, 0, pool=(4, 2), max_norm=0.9),
                              Conv(48, 8, 3, pool=(4, 2), max_norm=1.9365),
                              Conv(24, 5, 3, h2_pieces, pool=(2, 2), max_norm=1.9365)),
                untied_biases=True, hint_layer=1, **_TEACHER_DROPOUT)


def _fitnet_mnist(top_pieces: int) -> Arch:
    return Arch(MNIST_INPUT, (Conv(16, 5, 0, max_norm=0.9),
                              Conv(16, 3, 0, pool=(4, 2), max_norm=0.9),
                              Conv(16, 5, 3, max_norm=1.9365),
                              Conv(16, 3, 0, pool=(4, 2), max_norm=1.9365),
                              Conv(12, 3, 3, top_pieces, max_norm=1.9365),
                              Conv(12, 3, 0, top_pieces, pool=(2, 2), max_norm=1.9365)),
                untied_biases=True, guided_layer=3)


_FITNET_3 = ((32, 48, 64, 64), (80,) * 4, (128,) * 3)
_FITNET_4 = ((32, 32, 32, 48, 48), (80,) * 6, (128,) * 6)

_ARCHS = {
    "teacher_cifar": Arch(CIFAR_INPUT, (Conv(96, 8, 4, pool=(4, 2), max_norm=0.9),
                                        Conv(192, 8, 3, pool=(4, 2), max_norm=1.9365),
                                        Conv(192, 5, 3, pool=(2, 2), max_norm=1.9365),
                                        Dense(500, 5)),
                          conv_lr_scale=0.05, hint_layer=1, **_TEACHER_DROPOUT),
    # Table 7.
    "fitnet1": _fitnet(((16, 16, 16), (32, 32, 32), (48, 48, 64)), guided=6),
    "fitnet2": _fitnet(((16, 32, 32), (48, 64, 80), (96, 96, 128)), guided=6),
    "fitnet3": _fitnet(_FITNET_3, guided=8),
    "fitnet4": _fitnet(_FITNET_4, guided=11),
    # Table 6: ~30M and ~107M multiplications.
    "depth5_30m": _fitnet(((64,), (64,), (64,)), guided=2),
    "depth7_30m": _fitnet(((16, 32), (32, 64), (64,)), guided=4),
    "depth9_30m": _fitnet(((16, 32), (32, 32, 32), (48, 64)), guided=5),
    "depth11_30m": _fitnet(((16, 16, 16), (32, 32, 32), (48, 48, 64)), guided=7),
    "depth5_107m": _fitnet(((128,), (128,), (128,)), guided=2),
    "depth7_107m": _fitnet(((32, 64), (80, 80), (128,)), guided=4),
    "depth9_107m": _fitnet(((32, 32), (64, 80, 80), (96, 128)), guided=5),
    "depth11_107m": _fitnet(((16, 32, 32), (48, 64, 80), (96, 96, 128)), guided=7),
    # MNIST (D6).
    "teacher_mnist": _teacher_mnist(h2_pieces=2),
    "teacher_mnist_code": _teacher_mnist(h2_pieces=4),
    "fitnet_mnist": _fitnet_mnist(top_pieces=2),
    "fitnet_mnist_code": _fitnet_mnist(top_pieces=4),
    # SVHN (D5).
    "teacher_svhn": Arch(CIFAR_INPUT, (Conv(64, 5, 4, pool=(3, 2), max_norm=0.9),
                                       Conv(128, 5, 3, pool=(3, 2), max_norm=1.9365),
                                       Conv(128, 5, 3, pool=(3, 2), max_norm=1.9365),
                                       Dense(400, 5)),
                         conv_lr_scale=0.05, hint_layer=1, **_TEACHER_DROPOUT),
    "fitnet_svhn": _fitnet(_FITNET_3, guided=7),
    "fitnet_svhn_fitnet4": _fitnet(_FITNET_4, guided=10),
    # The 8x8 digits preset (not from the paper).
    "teacher_digits": Arch(DIGITS_INPUT, (Conv(32, pool=(2, 2)), Conv(32), Dense(64, 2)),
                           init_range=None, dropout=(0.1, 0.25), hint_layer=1),
    "fitnet_digits": Arch(DIGITS_INPUT, (Conv(4), Conv(4), Conv(4), Conv(4), Conv(4), Conv(4), Conv(6, pool=(2, 2)),
                                         Conv(6), Conv(6), Conv(6), Conv(6), Conv(6), Conv(8), Conv(8),
                                         Conv(8, pool=(2, 2)), Dense(32, 2)),
                          init_range=None, guided_layer=8),
}


def names() -> List[str]:
    """The model names ``build`` accepts: the maxout networks in the order of the paper's tables, then the
    CIFAR ResNets."""
    return list(_ARCHS) + resnet.names()


def arch(name: str) -> Arch:
    """The ``Arch`` spec behind ``build(name)`` for a maxout network (ResNets have none)."""
    if isinstance(name, str) and name in resnet.names():
        raise ValueError(f"{name!r} is a CIFAR ResNet, not a maxout network; it has no Arch spec")
    if not isinstance(name, str) or name not in _ARCHS:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(names())}")
    return _ARCHS[name]


# ---------------------------------------------------------------------------------------------------------
# Geometry and counts
# ---------------------------------------------------------------------------------------------------------

def _geometry(layer: nn.Module, in_shape: Shape) -> Tuple[Shape, Shape]:
    """``(detector_shape, output_shape)`` of a maxout layer fed ``in_shape``: conv ``(C, H, W)`` before and
    after pooling; linear ``(units,)`` twice. Raises ValueError when the input does not fit the layer."""
    if isinstance(layer, MaxoutConv2d):
        if len(in_shape) != 3 or in_shape[0] != layer.in_channels:
            raise ValueError(f"{type(layer).__name__} expects a ({layer.in_channels}, H, W) input, "
                             f"got {tuple(in_shape)}")
        k, p, s = layer.kernel_size, layer.padding, layer.stride
        det = tuple((n + 2 * p - k) // s + 1 for n in in_shape[1:])
        if min(det) < 1:
            raise ValueError(f"a {k}x{k} kernel (pad {p}) does not fit the {in_shape[1]}x{in_shape[2]} map")
        out = det
        if layer.pool is not None:
            if layer.pool[0] > min(det):
                raise ValueError(f"pool {layer.pool[0]} is larger than the {det[0]}x{det[1]} map")
            out = tuple(reference.pooled_size(n, *layer.pool) for n in det)
        return (layer.out_features,) + det, (layer.out_features,) + out
    if isinstance(layer, MaxoutLinear):
        if math.prod(in_shape) != layer.in_features:
            raise ValueError(f"MaxoutLinear expects {layer.in_features} input features, got shape "
                             f"{tuple(in_shape)} ({math.prod(in_shape)} features)")
        return (layer.out_features,), (layer.out_features,)
    raise TypeError(f"expected a MaxoutConv2d or MaxoutLinear layer, got {type(layer).__name__}")


def _check_shape(name: str, shape) -> Shape:
    if (not isinstance(shape, (tuple, list)) or len(shape) != 3
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape)):
        raise ValueError(f"{name} must be a (C, H, W) tuple of positive ints, got {shape!r}")
    return tuple(shape)


def _maxout_modules(model: nn.Module) -> List[nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if isinstance(m, (MaxoutConv2d, MaxoutLinear))]


def count_params(model: nn.Module) -> int:
    """Number of weights of every maxout layer (``MaxoutConv2d``, ``MaxoutLinear``, ``HintLoss``) in
    ``model``, pieces included, biases excluded: the authors' ``computeNumberParams.py`` convention."""
    return sum(m.weight.numel() for m in _maxout_modules(model))


def count_mults(model: nn.Module, input_shape: Optional[Shape] = None) -> int:
    """Multiplications per example, the authors' ``computeNumberMult.py`` convention: a conv layer costs
    ``weight.numel() * H_det * W_det`` (its pre-pool detector map, pieces included), a linear layer
    ``weight.numel()``. ``model`` is a ``MaxoutNet`` (``input_shape`` defaults to its own) or one maxout
    conv layer (e.g. a regressor; ``input_shape`` required, ``(C, H, W)``)."""
    if isinstance(model, MaxoutNet):
        layers = list(model.layers)
        shape = model.input_shape if input_shape is None else _check_shape("input_shape", input_shape)
    elif isinstance(model, MaxoutConv2d):
        layers = [model]
        shape = _check_shape("input_shape", input_shape)
    else:
        raise TypeError(f"model must be a MaxoutNet or a MaxoutConv2d, got {type(model).__name__}")
    total = 0
    for layer in layers:
        det, shape = _geometry(layer, shape)
        total += layer.weight.numel() * math.prod(det[1:])
    return total


# ---------------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------------

def input_dropout(x: torch.Tensor, p: float, scale: float, backend: str = "auto") -> torch.Tensor:
    """Dropout on a layer's input: ``x * mask * scale``, each mask element 1 with probability ``1 - p``.

    On the C++ kernel (``fitnets_fast.cpp.dropout``: the mask hashed from a seed, neither drawn sequentially
    nor stored) where ``backend`` ("auto" resolving to the default, or "cpp") and the tensor allow it; else
    ``x * torch.rand_like(x).ge_(p).mul_(scale)`` (keep where U[0, 1) >= p; about 4x faster than
    ``bernoulli_`` on the CPU). Both draw from PyTorch's default generator, with different masks.
    """
    chosen = _backend.check_name(backend)
    if chosen == "auto":
        chosen = _backend.default()
    cpp = _backend.module("cpp") if chosen in ("auto", "cpp") else None
    if cpp is not None and cpp.dropout.supports(x):
        return cpp.dropout.dropout(x, p, scale)
    return x * torch.rand_like(x).ge_(p).mul_(scale)


class MaxoutNet(nn.Module):
    """A pylearn2-style MLP of maxout layers built from an ``Arch``: ``forward(x)`` maps
    ``(N, *input_shape)`` to logits ``(N, num_classes)``.

    Attributes: ``layers`` (``nn.ModuleList``; ``layers[i](x)`` is that layer's output, post-maxout and
    post-pool; the last is the softmax layer ``MaxoutLinear(pieces=1)``, no softmax applied),
    ``layer_names``, ``input_shape`` ``(C, H, W)``, ``num_classes``, ``hint_layer`` / ``guided_layer``
    (default index into ``layers`` or None), ``input_dropout`` (drop probability on each layer's input,
    training mode only) and ``input_dropout_scale`` (the multiplier of each layer's kept inputs:
    ``1/(1-p)`` as ``F.dropout``, except the teachers' first layer, unscaled as in pylearn2).

    ``init_range`` overrides the spec's (None: PyTorch's default init); ``backend`` goes to every layer.
    """

    def __init__(self, spec: Arch, num_classes: int = 10, *, init_range=_FROM_SPEC, backend: str = "auto"):
        super().__init__()
        if not isinstance(spec, Arch):
            raise TypeError(f"spec must be an Arch, got {type(spec).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        _backend.check_name(backend)
        init = spec.init_range if init_range is _FROM_SPEC else init_range
        self.input_shape = spec.input_shape
        self.num_classes = num_classes
        self.hint_layer = spec.hint_layer
        self.guided_layer = spec.guided_layer
        self.layers = nn.ModuleList()
        self.layer_names: List[str] = []
        self._shapes: List[Shape] = []
        shape = spec.input_shape
        for i, hidden in enumerate(spec.hidden + (None,)):
            layer, name = self._make_layer(spec, hidden, shape, num_classes, init, backend, i)
            shape = _geometry(layer, shape)[1]
            self.layers.append(layer)
            self.layer_names.append(name)
            self._shapes.append(shape)
        self.backend = backend
        first, rest = spec.dropout
        self.input_dropout = [first] + [rest] * (len(self.layers) - 1)
        first_scale = 1 / (1 - first) if spec.first_input_scale is None else spec.first_input_scale
        self.input_dropout_scale = [first_scale] + [1 / (1 - rest)] * (len(self.layers) - 1)

    @staticmethod
    def _make_layer(spec: Arch, hidden, shape: Shape, num_classes: int, init, backend: str, index: int):
        """The ``index``-th layer (``hidden=None``: the softmax layer) fed ``shape``, and its name."""
        if isinstance(hidden, Conv):
            untied = (tuple(n + 2 * hidden.pad - hidden.kernel + 1 for n in shape[1:])
                      if spec.untied_biases and len(shape) == 3 else None)
            return MaxoutConv2d(shape[0], hidden.channels, hidden.kernel, hidden.pieces, padding=hidden.pad,
                                pool=hidden.pool, untied_bias=untied, max_norm=hidden.max_norm, init_range=init,
                                lr_scale=spec.conv_lr_scale, backend=backend), f"h{index}"
        if isinstance(hidden, Dense):
            return MaxoutLinear(math.prod(shape), hidden.units, hidden.pieces, max_norm=hidden.max_norm,
                                init_range=init, backend=backend), "fc"
        return MaxoutLinear(math.prod(shape), num_classes, 1, max_norm=spec.softmax_max_norm,
                            init_range=init, backend=backend), "y"

    def _index(self, index: Union[int, str]) -> int:
        """``index`` as a non-negative int: an int in ``[-n, n)`` or a layer name (``"h3"``, ``"fc"``, ``"y"``)."""
        n = len(self.layers)
        if isinstance(index, str) and index in self.layer_names:
            return self.layer_names.index(index)
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            raise ValueError(f"index must be an int in [-{n}, {n}) or a layer name ({', '.join(self.layer_names)}), "
                             f"got {index!r}")
        return index % n

    def forward_to(self, x: torch.Tensor, index: Union[int, str]) -> torch.Tensor:
        """Output of ``layers[index]`` (an int, negative counting from the end, or a layer name), running
        layers 0..index only.
        ``x`` is ``(N, *input_shape)``; the result is ``(N, *layer_output_shape(index))``."""
        index = self._index(index)
        _checks.tensor("x", x)
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x must be (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        for i in range(index + 1):
            p = self.input_dropout[i]
            if self.training and p > 0:
                x = input_dropout(x, p, self.input_dropout_scale[i], self.backend)
            x = self.layers[i](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of ``x`` ``(N, *input_shape)``."""
        return self.forward_to(x, -1)

    def layer_output_shape(self, index: Union[int, str]) -> Shape:
        """Output shape of ``layers[index]`` without the batch: ``(C, H, W)`` for a conv layer, ``(units,)``
        for a linear one."""
        return self._shapes[self._index(index)]

    def maxout_layers(self) -> List[nn.Module]:
        """Every layer (all are ``MaxoutConv2d`` or ``MaxoutLinear``), for max-norm and lr scales."""
        return list(self.layers)


def build(name: str, num_classes: int = 10, **options) -> nn.Module:
    """The network ``name`` (see ``names()``) with ``num_classes`` outputs: a ``MaxoutNet``, or a
    ``fitnets_fast.resnet.CifarResNet`` for the ResNet names.

    Options of the maxout networks: ``backend`` (the ops backend of every layer, default "auto");
    ``init_range`` (override the architecture's: a positive float for U(-r, r), or None for PyTorch's default
    initialisation). ResNets are plain PyTorch layers with no fused ops: they accept ``backend`` (checked, so
    one call can build either kind) and no other option.
    """
    if isinstance(name, str) and name in resnet.names():
        unknown = set(options) - {"backend"}
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)} for a ResNet; valid option: backend")
        _backend.check_name(options.get("backend", "auto"))
        return resnet.build(name, num_classes)
    spec = arch(name)
    unknown = set(options) - {"backend", "init_range"}
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for build(); valid options: backend, init_range")
    return MaxoutNet(spec, num_classes, **options)


def build_regressor(teacher_hint_shape: Shape, student_guided_shape: Shape, pieces: Optional[int] = None, *,
                    activation: str = "maxout", untied_bias: bool = False, backend: str = "auto") -> HintLoss:
    """The FitNets regressor (and hint loss) from the student's guided map to the teacher's hint map.

    A valid (unpadded, stride 1) conv followed by the teacher hint layer's non-linearity ``activation``
    ("maxout" with ``pieces`` pieces, default 2; "relu"; "none"), kernel
    ``N_g - N_h + 1`` per spatial dim, ``C_g -> C_h`` channels, init U(-0.05, 0.05), max-norm 0.9 [C].
    Shapes are ``(C, H, W)``. E.g. FitNet 4 from the CIFAR teacher: ``(192, 7, 7)`` from ``(80, 8, 8)``
    gives a 2x2 kernel, 80 -> 192 x 2 pieces. Equal shapes still get a 1x1 regressor (the released code
    would compare them directly). ``untied_bias``: one bias per filter and hint location, as the teacher's
    hint layer when its biases are untied (the released code copies the hint layer's ``tied_b``).
    """
    hint = _check_shape("teacher_hint_shape", teacher_hint_shape)
    guided = _check_shape("student_guided_shape", student_guided_shape)
    if hint[1] > guided[1] or hint[2] > guided[2]:
        raise ValueError(f"the teacher hint map {hint[1]}x{hint[2]} is larger than the student guided map "
                         f"{guided[1]}x{guided[2]}; a valid-conv regressor can only shrink it (pick a "
                         f"deeper hint layer or a shallower guided layer)")
    kh, kw = guided[1] - hint[1] + 1, guided[2] - hint[2] + 1
    if kh != kw:
        raise ValueError(f"the regressor kernel would be {kh}x{kw}; HintLoss supports square kernels only "
                         f"(hint {hint}, guided {guided})")
    return HintLoss(guided[0], hint[0], kh, pieces, activation=activation,
                    untied_bias=hint[1:] if untied_bias else None, max_norm=0.9, init_range=0.05, backend=backend)
