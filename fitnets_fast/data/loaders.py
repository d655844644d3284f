"""``load(name, root, **opts)``: the one entry point to every raw data set (never downloads)."""
from __future__ import annotations

import inspect
from typing import Callable, Dict, Optional

from .builtin import load_digits, load_synthetic
from .cifar import load_cifar10, load_cifar100
from .mnist import load_mnist
from .svhn import load_svhn
from .types import Dataset

#: name -> reader; the FILE_BASED ones take ``root`` first.
READERS: Dict[str, Callable[..., Dataset]] = {
    "cifar10": load_cifar10, "cifar100": load_cifar100, "mnist": load_mnist, "svhn": load_svhn,
    "digits": load_digits, "synthetic": load_synthetic,
}
FILE_BASED = ("cifar10", "cifar100", "mnist", "svhn")


def load(name: str, root: Optional[str] = None, **opts) -> Dataset:
    """Load data set ``name`` as uint8 images (N, C, H, W) + int64 labels + class names.

    ``name``: "cifar10", "cifar100" (opts: ``coarse=True`` for the 20 superclasses), "mnist", "svhn" (opts:
    ``extra=True`` appends extra_32x32.mat to train), "digits" (scikit-learn's bundled 8x8 digits; 1,437 train /
    360 test) or "synthetic" (opts: ``n_train``, ``n_test``, ``num_classes``, ``image_shape``, ``seed``,
    ``noise``). ``root``: the data set's folder or a parent of it; None means ``$FITNETS_FAST_DATA`` or
    ``./data``. digits and synthetic take no ``root``.

    Raises ValueError for an unknown name, TypeError for an option the reader does not take,
    FileNotFoundError for missing files (naming them and the layout) and CorruptFileError (a ValueError)
    for a damaged file (naming it).
    """
    if name not in READERS:
        raise ValueError(f"name must be one of {', '.join(READERS)}, got {name!r}")
    reader = READERS[name]
    accepted = [p for p in inspect.signature(reader).parameters if p != "root"]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise TypeError(f"{name} takes the options {accepted or 'none'}, got {unknown}")
    if name in FILE_BASED:
        return reader(root, **opts)
    if root is not None:
        raise ValueError(f"{name} is built in and reads no files: pass root=None, got {root!r}")
    return reader(**opts)
