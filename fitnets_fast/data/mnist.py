"""MNIST in the idx format (``train-images-idx3-ubyte`` etc.), gzipped (``.gz``) or plain."""
from __future__ import annotations

import gzip
import zlib
from typing import Optional

import numpy as np
import torch

from .files import CorruptFileError, locate, resolve
from .types import Dataset, Split

FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
LAYOUT = ("a folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
          "t10k-labels-idx1-ubyte (each plain or with .gz); root may be that folder or a parent holding it "
          "as mnist/, MNIST/raw/ or MNIST/")


def _alternatives(stem: str):
    return (stem, stem + ".gz")


def read_idx(path: str, ndim: int) -> np.ndarray:
    """Parse an idx file of unsigned bytes with ``ndim`` dimensions (big-endian int32 sizes).

    Returns a uint8 array of the stored shape. Raises CorruptFileError if the magic number, the rank or the
    payload length (truncated or trailing bytes) is wrong, or if the gzip stream is damaged.
    """
    expected = f"an idx file of unsigned bytes (magic 0x0000080{ndim}) with {ndim} dimension(s)"
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptFileError(path, f"cannot be read ({type(exc).__name__}: {exc})", expected) from exc
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(path, f"is {len(raw)} bytes, shorter than its {header}-byte header", expected)
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise CorruptFileError(path, f"has magic bytes {raw[:4].hex()}", expected)
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        what = "truncated" if len(raw) - header < size else "longer than its header says"
        raise CorruptFileError(path, f"is {what}: header {shape} needs {size} bytes of data, found "
                               f"{len(raw) - header}", expected)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _split(folder: str, part: str) -> Split:
    img_path = resolve(folder, _alternatives(FILES[f"{part}_images"]))
    lab_path = resolve(folder, _alternatives(FILES[f"{part}_labels"]))
    images = read_idx(img_path, 3)
    labels = read_idx(lab_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise CorruptFileError(lab_path, f"holds {labels.shape[0]} labels but {img_path} holds "
                               f"{images.shape[0]} images", "one label per image")
    if labels.size and labels.max() > 9:
        raise CorruptFileError(lab_path, f"holds label {int(labels.max())}", "digit labels 0..9")
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def load_mnist(root: Optional[str] = None) -> Dataset:
    """MNIST: train (60,000) and test (10,000) images (N, 1, 28, 28) uint8; classes "0".."9"."""
    folder = locate(root, ["mnist", "MNIST/raw", "MNIST"], [_alternatives(f) for f in FILES.values()], LAYOUT)
    return Dataset("mnist", _split(folder, "train"), _split(folder, "test"), [str(d) for d in range(10)])
