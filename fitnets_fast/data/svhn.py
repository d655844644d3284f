"""SVHN (format 2, cropped digits) from ``train_32x32.mat``, ``test_32x32.mat`` and optionally
``extra_32x32.mat``. In the files label 10 means digit 0; here labels are the digits 0..9."""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.io
import torch

from .files import CorruptFileError, locate, resolve
from .types import Dataset, Split, concat

LAYOUT = ("a folder holding train_32x32.mat and test_32x32.mat (and extra_32x32.mat with extra=True), each a "
          "MATLAB file with 'X' uint8 [32, 32, 3, N] and 'y' [N, 1] in 1..10; root may be that folder or a "
          "parent holding it as svhn/ or SVHN/")
EXPECTED = "a MATLAB .mat file with 'X' uint8 [32, 32, 3, N] and 'y' [N, 1] with labels 1..10 (10 = digit 0)"


def read_mat(path: str) -> Split:
    """Read one SVHN .mat file: X (32, 32, 3, N) -> images (N, 3, 32, 32); y 1..10 -> labels 0..9."""
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, TypeError, OSError, EOFError, MemoryError, NotImplementedError, IndexError) as exc:
        raise CorruptFileError(path, f"cannot be read ({type(exc).__name__}: {exc})", EXPECTED) from exc
    if "X" not in mat or "y" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise CorruptFileError(path, f"has variables {keys}, lacks 'X' or 'y'", EXPECTED)
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise CorruptFileError(path, f"'X' is {x.dtype} {x.shape}", EXPECTED)
    if y.shape[0] != x.shape[3]:
        raise CorruptFileError(path, f"{x.shape[3]} images but {y.shape[0]} labels", EXPECTED)
    if y.size and (y.min() < 1 or y.max() > 10):
        raise CorruptFileError(path, f"labels span [{y.min()}, {y.max()}]", EXPECTED)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
    return Split(images, torch.from_numpy((y.astype(np.int64)) % 10))


def load_svhn(root: Optional[str] = None, *, extra: bool = False) -> Dataset:
    """SVHN: train (73,257) and test (26,032) images (N, 3, 32, 32) uint8; classes "0".."9".

    With ``extra=True`` the 531,131 ``extra_32x32.mat`` images are appended to train and
    ``Dataset.extra_start`` says where they begin.
    """
    names = ["train_32x32.mat", "test_32x32.mat"] + (["extra_32x32.mat"] if extra else [])
    folder = locate(root, ["svhn", "SVHN"], names, LAYOUT)
    train = read_mat(resolve(folder, ["train_32x32.mat"]))
    test = read_mat(resolve(folder, ["test_32x32.mat"]))
    start = None
    if extra:
        start = len(train)
        train = concat([train, read_mat(resolve(folder, ["extra_32x32.mat"]))])
    return Dataset("svhn", train, test, [str(d) for d in range(10)], extra_start=start)
