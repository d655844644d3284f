"""The raw data set containers every loader returns (uint8 images + int64 labels + class names)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch


@dataclass(frozen=True)
class Split:
    """One part of a data set.

    ``images``: uint8 tensor (N, C, H, W), raw pixel values 0..255.
    ``labels``: int64 tensor (N,), class indices into the data set's ``classes``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise TypeError(f"images must be a uint8 tensor (N, C, H, W), got "
                            f"{getattr(self.images, 'dtype', type(self.images).__name__)} "
                            f"{tuple(getattr(self.images, 'shape', ()))}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise TypeError(f"labels must be an int64 tensor (N,), got "
                            f"{getattr(self.labels, 'dtype', type(self.labels).__name__)} "
                            f"{tuple(getattr(self.labels, 'shape', ()))}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"images and labels disagree on N: {self.images.shape[0]} vs {self.labels.shape[0]}")

    def __len__(self) -> int:
        return self.images.shape[0]


def concat(parts) -> Split:
    """The splits in ``parts`` stacked in order along N."""
    return Split(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


@dataclass(frozen=True)
class Dataset:
    """A loaded data set: ``train`` and ``test`` splits and the ``classes`` names (index = label).

    ``extra_start``: for SVHN loaded with ``extra=True``, the row of ``train`` where the rows from
    ``extra_32x32.mat`` begin (they are appended after the ``train_32x32.mat`` rows); None otherwise.
    """

    name: str
    train: Split
    test: Split
    classes: List[str]
    extra_start: Optional[int] = None

    def __post_init__(self):
        k = len(self.classes)
        for part in ("train", "test"):
            split = getattr(self, part)
            if split.images.shape[1:] != self.train.images.shape[1:]:
                raise ValueError(f"{part} images are {tuple(split.images.shape[1:])}, train images "
                                 f"{tuple(self.train.images.shape[1:])}")
            if len(split) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= k):
                raise ValueError(f"{part} labels must lie in [0, {k}) for {k} classes, got "
                                 f"[{int(split.labels.min())}, {int(split.labels.max())}]")
