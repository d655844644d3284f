"""The CIFAR ResNets of He et al. (2016, section 4.2), in the variant that CIFAR-100 distillation benchmarks
(e.g. Tian et al., ICLR 2020) use as teachers and students.

A ``resnet{depth}`` has depth ``6n + 2``: a 3x3 stem convolution, three stages of ``n`` basic blocks (two 3x3
convolutions each, BN after every convolution, ReLU after the first and after the residual sum), global average
pooling and a linear layer giving logits. The first stage keeps the stem's map size; the second and third halve
it (stride 2 in their first block's first convolution). A block whose input and output differ in channels or
size adds a 1x1 convolution (with that stride) and BN on its shortcut; the others add the input itself.

Widths ``(stem, stage 1, stage 2, stage 3)``: ``(16, 16, 32, 64)`` for resnet8 ... resnet110, and
``(32, 64, 128, 256)`` for the "x4" networks resnet8x4 and resnet32x4. Convolutions have no bias; weights are
Kaiming-normal (fan out, ReLU gain), BN starts at weight 1, bias 0; the linear layer keeps PyTorch's default.

Module paths (as ``named_modules()`` gives them): ``conv1``, ``bn1``, ``relu`` (the stem), ``layer1``,
``layer2``, ``layer3`` (the stages; ``layer2`` is the output of the second stage), ``layer2.0`` ... (its
blocks, each with ``conv1, bn1, conv2, bn2, relu`` and, when needed, ``shortcut``), ``pool`` and ``fc``.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn as nn

__all__ = ["BasicBlock", "CifarResNet", "names", "build"]

_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)
_SPECS: Dict[str, Tuple[int, Tuple[int, int, int, int]]] = {
    **{f"resnet{d}": (d, _NARROW) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (8, _WIDE),
    "resnet32x4": (32, _WIDE),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection: ``relu(bn2(conv2(relu(bn1(conv1(x))))) +
    shortcut(x))``. Input ``(N, cin, H, W)``; output ``(N, cout, ceil(H / stride), ceil(W / stride))``.
    ``shortcut`` is a 1x1 conv (stride ``stride``) + BN when ``stride != 1`` or ``cin != cout``, else identity."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet of depth ``6n + 2`` (see the module doc): ``forward(x)`` maps ``(N, 3, H, W)`` (32x32 for
    CIFAR) to logits ``(N, num_classes)``.

    ``widths``: ``(stem, stage1, stage2, stage3)`` channels. Attributes: ``input_shape`` ``(3, 32, 32)`` (the
    shape it was designed for; global pooling accepts other sizes), ``num_classes``, ``depth``.
    """

    input_shape = (3, 32, 32)

    def __init__(self, depth: int, widths: Tuple[int, int, int, int] = _NARROW, num_classes: int = 10):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
        if (not isinstance(widths, (tuple, list)) or len(widths) != 4
                or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)):
            raise ValueError(f"widths must be 4 positive ints (stem, stage1, stage2, stage3), got {widths!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        n = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), *(BasicBlock(cout, cout) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be a tensor (N, 3, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def names() -> List[str]:
    """The ResNet names ``build`` accepts: resnet8/14/20/32/44/56/110, resnet8x4, resnet32x4."""
    return list(_SPECS)


def build(name: str, num_classes: int = 10) -> CifarResNet:
    """The CIFAR ResNet ``name`` (see ``names()``) with ``num_classes`` outputs."""
    if name not in _SPECS:
        raise ValueError(f"unknown ResNet name {name!r}; valid names: {', '.join(_SPECS)}")
    depth, widths = _SPECS[name]
    return CifarResNet(depth, widths, num_classes)
