"""Offline data sets, the paper's preprocessing and device-side augmentation.

* :func:`load` (``loaders.py``): raw uint8 images + labels + class names for cifar10, cifar100, mnist, svhn
  (standard on-disk layouts, never downloaded), digits (scikit-learn's bundled 8x8 digits) and synthetic.
* :func:`prepare` (``prepare.py``): the paper's validation split and preprocessing (GCN + ZCA for CIFAR, cached
  on disk; or per-channel mean/std normalisation), as float32 tensors on the training device.
* :class:`Batches` and :func:`window_and_flip` (``pipeline.py``): reproducible full batches sliced from the
  resident tensors, with pylearn2's random crop (8 px padding by default) + horizontal flip done on whole batches.
"""
from __future__ import annotations

from .files import CorruptFileError
from .loaders import load
from .pipeline import Batches, window_and_flip
from .prepare import Prepared, prepare
from .types import Dataset, Split

__all__ = ["load", "prepare", "Prepared", "Batches", "window_and_flip", "Dataset", "Split", "CorruptFileError"]
