"""Data sets that need no files: scikit-learn's bundled 8x8 digits and a seeded synthetic set."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .seeding import derive_seed
from .types import Dataset, Split

#: The digits split: the first DIGITS_TRAIN of sklearn's 1,797 images train, the last 360 test (no shuffling,
#: so it never depends on a random generator; both parts hold 33..37 images of each digit in the test part).
DIGITS_TRAIN = 1437


def load_digits() -> Dataset:
    """scikit-learn's bundled handwritten digits (UCI optdigits test part, 1,797 real 8x8 images).

    Pixels 0..16 become uint8 round(v * 255 / 16); images (N, 1, 8, 8). Split: the first 1,437 in sklearn's
    order are train, the last 360 test. Classes "0".."9".
    """
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    pixels = torch.from_numpy(d.images).mul(255.0 / 16.0).round_().clamp_(0, 255).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(d.target).to(torch.int64)
    train = Split(pixels[:DIGITS_TRAIN].contiguous(), labels[:DIGITS_TRAIN].contiguous())
    test = Split(pixels[DIGITS_TRAIN:].contiguous(), labels[DIGITS_TRAIN:].contiguous())
    return Dataset("digits", train, test, [str(int(t)) for t in d.target_names])


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _images(templates: torch.Tensor, n: int, noise: float, seed: int) -> Split:
    """``n`` images: balanced labels in a seeded order, template of the label * 50 + 128, plus a per-image
    brightness offset (std 15) and per-pixel Gaussian noise (std ``noise``), rounded and clipped to uint8."""
    g = torch.Generator().manual_seed(seed)
    k = templates.shape[0]
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
    shape = templates.shape[1:]
    x = 128.0 + 50.0 * templates[labels]
    x += 15.0 * torch.randn(n, 1, 1, 1, generator=g) + noise * torch.randn(n, *shape, generator=g)
    return Split(x.round_().clamp_(0, 255).to(torch.uint8), labels)


def load_synthetic(*, n_train: int = 2048, n_test: int = 512, num_classes: int = 10,
                   image_shape: Sequence[int] = (3, 32, 32), seed: int = 0, noise: float = 40.0) -> Dataset:
    """A seeded synthetic image set with learnable structure, for tests and benchmarks.

    Each class has a fixed smooth random pattern (unit-variance noise on a coarse grid of about H/4 x W/4,
    bilinearly upsampled); an image is 128 + 50 * its class pattern + a brightness offset + pixel noise of std
    ``noise``. Labels are balanced (counts differ by at most one). Train and test use independent draws of the
    same patterns, so a classifier that learns the patterns generalises; the same arguments give the same data.
    Classes are named "class0", "class1", ...
    """
    _check_count("n_train", n_train, 1)
    _check_count("n_test", n_test, 1)
    _check_count("num_classes", num_classes, 2)
    shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else None
    if shape is None or len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"image_shape must be (C, H, W) of positive ints, got {image_shape!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    c, h, w = shape
    g = torch.Generator().manual_seed(derive_seed("synthetic-patterns", seed))
    coarse = torch.randn(num_classes, c, max(2, h // 4), max(2, w // 4), generator=g)
    templates = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    templates = templates / templates.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    train = _images(templates, n_train, float(noise), derive_seed("synthetic-train", seed))
    test = _images(templates, n_test, float(noise), derive_seed("synthetic-test", seed))
    return Dataset("synthetic", train, test, [f"class{i}" for i in range(num_classes)])
