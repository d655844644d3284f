"""CIFAR-10 and CIFAR-100 from the standard python-pickle release (``cifar-10-batches-py/``,
``cifar-100-python/``). Pickles with ``str`` or ``bytes`` keys, Python 2 or 3, are accepted."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .files import CorruptFileError, locate, read_pickle, resolve, text
from .types import Dataset, Split, concat

CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_LAYOUT = ("cifar-10-batches-py/ holding data_batch_1 .. data_batch_5, test_batch and batches.meta "
                  "(pickled dicts: 'data' uint8 [N, 3072] in CHW order, 'labels'; batches.meta: "
                  "'label_names'); root may be that folder or its parent")
CIFAR100_LAYOUT = ("cifar-100-python/ holding train, test and meta (pickled dicts: 'data' uint8 [N, 3072] "
                   "in CHW order, 'fine_labels', 'coarse_labels'; meta: 'fine_label_names', "
                   "'coarse_label_names'); root may be that folder or its parent")


def _batch(path: str, label_key: str, num_classes: int, layout: str) -> Split:
    """Read one pickled batch: (N, 3072) uint8 rows -> images (N, 3, 32, 32), labels (N,)."""
    expected = f"a pickled dict with 'data' uint8 [N, 3072] and '{label_key}' (N ints), as in {layout}"
    d = read_pickle(path, expected)
    if "data" not in d or label_key not in d:
        raise CorruptFileError(path, f"has keys {sorted(map(str, d))}, lacks 'data' or '{label_key}'", expected)
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        got = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__)
        raise CorruptFileError(path, f"'data' is {got}", expected)
    try:
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(path, f"'{label_key}' is not a list of ints ({exc})", expected) from exc
    if labels.shape[0] != data.shape[0]:
        raise CorruptFileError(path, f"{data.shape[0]} images but {labels.shape[0]} labels", expected)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptFileError(path, f"labels outside [0, {num_classes})", expected)
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)
    return Split(images, torch.from_numpy(labels))


def _names(path: str, key: str, count: int, layout: str) -> list:
    expected = f"a pickled dict with '{key}' ({count} class names), as in {layout}"
    meta = read_pickle(path, expected)
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or len(names) != count:
        raise CorruptFileError(path, f"'{key}' is missing or does not hold {count} names", expected)
    return [text(n) for n in names]


def load_cifar10(root: Optional[str] = None) -> Dataset:
    """CIFAR-10: train = data_batch_1..5 in order (50,000), test = test_batch (10,000), 10 classes."""
    folder = locate(root, ["cifar-10-batches-py"], CIFAR10_BATCHES + ["test_batch", "batches.meta"],
                    CIFAR10_LAYOUT)
    train = concat([_batch(resolve(folder, [b]), "labels", 10, CIFAR10_LAYOUT) for b in CIFAR10_BATCHES])
    test = _batch(resolve(folder, ["test_batch"]), "labels", 10, CIFAR10_LAYOUT)
    classes = _names(resolve(folder, ["batches.meta"]), "label_names", 10, CIFAR10_LAYOUT)
    return Dataset("cifar10", train, test, classes)


def load_cifar100(root: Optional[str] = None, *, coarse: bool = False) -> Dataset:
    """CIFAR-100: train (50,000) and test (10,000); 100 fine labels, or the 20 coarse ones if ``coarse``."""
    folder = locate(root, ["cifar-100-python"], ["train", "test", "meta"], CIFAR100_LAYOUT)
    key, count = ("coarse", 20) if coarse else ("fine", 100)
    train = _batch(resolve(folder, ["train"]), f"{key}_labels", count, CIFAR100_LAYOUT)
    test = _batch(resolve(folder, ["test"]), f"{key}_labels", count, CIFAR100_LAYOUT)
    classes = _names(resolve(folder, ["meta"]), f"{key}_label_names", count, CIFAR100_LAYOUT)
    return Dataset("cifar100", train, test, classes)
