"""``prepare(...)``: a loaded data set turned into float tensors on the training device, with the paper's
validation split and preprocessing.

Validation splits (``validation=True``; the validation rows are removed from train, order kept):

* cifar10, cifar100: the last fifth of the training set, i.e. the last 10,000 of 50,000 (the paper's 40K/10K,
  ``start: 40000, stop: 50000`` in the authors' YAML).
* mnist: the last sixth, i.e. the last 10,000 of 60,000 (the paper's 50K/10K).
* svhn: the last 400 images of each class in ``train_32x32.mat`` plus, with ``extra=True``, the last 200 of
  each class in ``extra_32x32.mat`` (pylearn2's 6,000-image SVHN validation set has these per-class counts;
  pylearn2 draws its rows at random, here they are the last ones so no generator is involved).
* digits, synthetic: the last fifth of the training set (287 of digits' 1,437).

``validation=False`` retrains on all training data (``valid`` is None).

Preprocessing ``"paper"``:

* cifar10, cifar100 and synthetic (which stands in for CIFAR in tests and benchmarks): GCN (each image
  centred and scaled to L2 norm 55) then ZCA whitening with filter bias 0.1, fitted on the training split only
  (without the validation rows). The fitted transform and the whitened arrays are cached on disk, keyed by a
  hash of the images and the settings; a later run with the same data loads them instead of refitting.
* mnist, digits: pixels / 255 (pylearn2's MNIST default; no centring).
* svhn: GCN (centred, L2 norm 1) then LeCun local contrast normalisation per channel (7x7 Gaussian window,
  sigma 2), as pylearn2's ``svhn_preprocessing.py``; nothing is fitted, so nothing is cached.

``"mean_std"`` (any data set; the recipe of the CIFAR-100 ResNet distillation benchmarks): pixels / 255, then
each channel standardised with the mean and standard deviation of that channel over the training split (without
the validation rows); nothing is cached (the statistics take one pass over the images).

``"none"``: pixels / 255 for every data set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch

from . import cache
from .loaders import load
from .preprocess import ZCA, ChannelNorm, gcn, lcn, scale_pixels
from .types import Dataset, Split

GCN_SCALE = 55.0
ZCA_FILTER_BIAS = 0.1
PIPELINE_VERSION = 1  # bump when a preprocessing change must invalidate cached entries
SVHN_VALID_PER_CLASS = (400, 200)  # from train_32x32.mat, from extra_32x32.mat
VALID_DENOMINATOR = {"cifar10": 5, "cifar100": 5, "mnist": 6, "digits": 5, "synthetic": 5}
WHITENED = ("cifar10", "cifar100", "synthetic")
PREPROCESSING = ("paper", "mean_std", "none")

Pair = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class Prepared:
    """A data set ready for training.

    ``train``, ``test`` and ``valid`` (None when ``validation=False``): (x, y) with x float32 (N, C, H, W) and
    y int64 (N,), on the requested device. ``classes``: names (index = label). ``input_shape``: (C, H, W).
    ``describe``: one line saying which split and preprocessing were applied. ``from_cache``: True when the
    fitted preprocessing came from the disk cache instead of being fitted in this call.
    """

    train: Pair
    valid: Optional[Pair]
    test: Pair
    classes: List[str]
    input_shape: Tuple[int, int, int]
    describe: str
    from_cache: bool = False


def _take(split: Split, mask: torch.Tensor) -> Split:
    return Split(split.images[mask].contiguous(), split.labels[mask].contiguous())


def _last_per_class(labels: torch.Tensor, count: int, num_classes: int, what: str) -> torch.Tensor:
    """Boolean mask of the last ``count`` rows of each class in ``labels``."""
    mask = torch.zeros(labels.shape[0], dtype=torch.bool)
    for c in range(num_classes):
        rows = (labels == c).nonzero().flatten()
        if rows.numel() <= count:
            raise ValueError(f"{what} has {rows.numel()} images of class {c}; its validation split takes the "
                             f"last {count} of each class and must leave some for training")
        mask[rows[-count:]] = True
    return mask


def split_validation(ds: Dataset) -> Tuple[Split, Split, str]:
    """(train without validation rows, validation rows, a description) by the rules in the module doc."""
    n = len(ds.train)
    if ds.name == "svhn":
        end = ds.extra_start if ds.extra_start is not None else n
        k = len(ds.classes)
        valid = torch.cat([_last_per_class(ds.train.labels[:end], SVHN_VALID_PER_CLASS[0], k, "train_32x32.mat"),
                           _last_per_class(ds.train.labels[end:], SVHN_VALID_PER_CLASS[1], k, "extra_32x32.mat")
                           if end < n else torch.zeros(0, dtype=torch.bool)])
        how = (f"the last {SVHN_VALID_PER_CLASS[0]} per class of train_32x32.mat"
               + (f" + the last {SVHN_VALID_PER_CLASS[1]} per class of extra_32x32.mat" if end < n else ""))
    else:
        n_valid = n // VALID_DENOMINATOR[ds.name]
        if n_valid < 1 or n_valid >= n:
            raise ValueError(f"{ds.name} has {n} training images, too few to hold out the last "
                             f"1/{VALID_DENOMINATOR[ds.name]} for validation; use validation=False")
        valid = torch.zeros(n, dtype=torch.bool)
        valid[n - n_valid:] = True
        how = f"the last {n_valid} of the {n} training images"
    return _take(ds.train, ~valid), _take(ds.train, valid), how


def _whiten(fit: Split, others: List[Split], folder: Optional[str]) -> Tuple[List[torch.Tensor], str, bool]:
    """GCN + ZCA fitted on ``fit``, applied to ``fit`` and ``others``; cached. Returns (arrays, note, hit)."""
    settings = ("gcn-zca", PIPELINE_VERSION, GCN_SCALE, ZCA_FILTER_BIAS)
    fit_key = cache.content_hash(*settings, fit.images)
    out_key = cache.content_hash(fit_key, *[s.images for s in others])
    names = [f"x{i}" for i in range(1 + len(others))]
    shapes = [fit.images.shape] + [s.images.shape for s in others]
    entry = cache.load(folder, "prepared", out_key)
    if entry is not None and all(entry.get(k) is not None and entry[k].shape == s for k, s in zip(names, shapes)):
        return [entry[k] for k in names], "arrays loaded from cache", True
    stored = cache.load(folder, "zca", fit_key)
    if stored is not None and stored.get("mean") is not None and stored.get("matrix") is not None:
        zca, note, hit = ZCA(stored["mean"], stored["matrix"], ZCA_FILTER_BIAS), "transform loaded from cache", True
    else:
        zca = ZCA.fit(gcn(fit.images, GCN_SCALE), ZCA_FILTER_BIAS)
        cache.save(folder, "zca", fit_key, {"mean": zca.mean, "matrix": zca.matrix})
        note, hit = "fitted", False
    arrays = [zca.apply(gcn(s.images, GCN_SCALE)) for s in [fit] + others]
    cache.save(folder, "prepared", out_key, dict(zip(names, arrays)))
    return arrays, note, hit


def prepare(name: str, root: Optional[str] = None, *, validation: bool = True, preprocessing: str = "paper",
            cache_dir: Union[str, None, bool] = None, device: Union[str, torch.device] = "cpu",
            **opts) -> Prepared:
    """Load ``name`` (see :func:`fitnets_fast.data.load`; ``root`` and ``opts`` go there), split off the
    paper's validation set if ``validation``, preprocess (``"paper"``, ``"mean_std"`` or ``"none"``, see the
    module doc) and
    move everything to ``device``.

    ``cache_dir``: folder for cached transforms and whitened arrays (None: ``$FITNETS_FAST_CACHE`` or
    ``~/.cache/fitnets_fast``; False: no caching). Whitened CIFAR-10 takes about 740 MB there per split choice.
    """
    if not isinstance(validation, bool):
        raise TypeError(f"validation must be a bool, got {type(validation).__name__}")
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}")
    if not (cache_dir is None or cache_dir is False or isinstance(cache_dir, (str, os.PathLike))):
        raise TypeError(f"cache_dir must be a folder path, None (default folder) or False (no cache), "
                        f"got {cache_dir!r}")
    device = torch.device(device)
    folder = None if cache_dir is False else (cache.default_dir() if cache_dir is None else os.fspath(cache_dir))
    ds = load(name, root, **opts)
    if validation:
        fit, valid, how = split_validation(ds)
        split_note = f"valid = {how}"
    else:
        fit, valid, split_note = ds.train, None, "no validation split (all training data)"
    parts = [fit] + ([valid] if valid is not None else []) + [ds.test]
    from_cache = False
    if preprocessing == "none":
        arrays, pre_note = [scale_pixels(p.images) for p in parts], "pixels / 255"
    elif preprocessing == "mean_std":
        pixels = [scale_pixels(p.images) for p in parts]
        norm = ChannelNorm.fit(pixels[0])
        arrays = [norm.apply(a) for a in pixels]
        pre_note = (f"pixels / 255, then per-channel mean/std normalisation (mean "
                    f"{', '.join(f'{v:.4f}' for v in norm.mean.tolist())}; std "
                    f"{', '.join(f'{v:.4f}' for v in norm.std.tolist())}) of the {len(fit)} training images")
    elif name in WHITENED:
        arrays, how_fit, from_cache = _whiten(fit, parts[1:], folder)
        pre_note = (f"GCN (L2 norm {GCN_SCALE:g}) + ZCA (filter bias {ZCA_FILTER_BIAS:g}) fitted on the "
                    f"{len(fit)} training images ({how_fit})")
    elif name == "svhn":
        arrays = [lcn(gcn(p.images, 1.0)) for p in parts]
        pre_note = "GCN (L2 norm 1) + LeCun LCN (7x7 Gaussian, sigma 2) per channel"
    else:
        arrays, pre_note = [scale_pixels(p.images) for p in parts], "pixels / 255"
    pairs = [(a.to(device), p.labels.to(device)) for a, p in zip(arrays, parts)]
    sizes = f"train {len(fit)}" + (f" / valid {len(valid)}" if valid is not None else "") + f" / test {len(ds.test)}"
    describe = f"{name}: {sizes}; {split_note}; {pre_note}"
    return Prepared(train=pairs[0], valid=pairs[1] if valid is not None else None, test=pairs[-1],
                    classes=list(ds.classes), input_shape=tuple(ds.train.images.shape[1:]), describe=describe,
                    from_cache=from_cache)
