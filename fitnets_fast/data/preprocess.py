"""The paper's pixel preprocessing: global contrast normalisation, ZCA whitening and LeCun's local contrast
normalisation, as pylearn2 defines them (``global_contrast_normalize``, ``preprocessing.ZCA``,
``LeCunLCN``); and the per-channel mean/std normalisation of modern CIFAR recipes (``ChannelNorm``). All functions work on CPU or GPU tensors and process large inputs in row chunks so the
temporaries stay small; results are float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from scipy.linalg import blas

CHUNK = 4096


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise TypeError(f"{name} must be a tensor (N, ...) with N images, got "
                        f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    return x.reshape(x.shape[0], -1)


def scale_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (x / 255), same shape."""
    return x.to(torch.float32).div_(255.0)


def gcn(x: torch.Tensor, scale: float = 55.0, min_divisor: float = 1e-8) -> torch.Tensor:
    """Global contrast normalisation of each image (pylearn2 ``global_contrast_normalize`` with
    ``use_std=False, sqrt_bias=0``): subtract the image's mean over all its pixels and channels, then scale
    the image to L2 norm ``scale``. An image whose norm is below ``min_divisor`` (a constant image) is only
    centred. Input (N, ...) of any dtype; output float32 of the same shape.
    """
    flat = _rows(x, "x")
    out = torch.empty(flat.shape, dtype=torch.float32, device=x.device)
    for i in range(0, flat.shape[0], CHUNK):
        v = flat[i:i + CHUNK].to(torch.float32)
        v -= v.mean(dim=1, keepdim=True)
        norm = v.norm(dim=1, keepdim=True) / scale
        norm = torch.where(norm < min_divisor, torch.ones_like(norm), norm)
        out[i:i + CHUNK] = v / norm
    return out.view(x.shape)


def gaussian_kernel(size: int = 7, sigma: float = 2.0) -> torch.Tensor:
    """The (size, size) float32 Gaussian window of pylearn2's LCN, normalised to sum 1."""
    mid = size // 2
    r = torch.arange(size, dtype=torch.float64) - mid
    k = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma ** 2))
    return (k / k.sum()).to(torch.float32)


def lcn(x: torch.Tensor, kernel_size: int = 7, sigma: float = 2.0, threshold: float = 1e-4) -> torch.Tensor:
    """LeCun local contrast normalisation of each channel (pylearn2 ``LeCunLCN``, kernel 7, sigma 2).

    ``x`` (N, C, H, W) float. Per channel: subtract the Gaussian-weighted local mean (zero padding at the
    borders), then divide by max(local std, mean of the local std over the image, ``threshold``).
    Returns float32 (N, C, H, W).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise TypeError(f"x must be a tensor (N, C, H, W), got "
                        f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    c = x.shape[1]
    w = gaussian_kernel(kernel_size, sigma).to(x.device).expand(c, 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for i in range(0, x.shape[0], CHUNK):
        v = x[i:i + CHUNK].to(torch.float32)
        centred = v - F.conv2d(v, w, padding=pad, groups=c)
        local_std = F.conv2d(centred * centred, w, padding=pad, groups=c).clamp_min_(0).sqrt_()
        divisor = torch.maximum(local_std, local_std.mean(dim=(2, 3), keepdim=True)).clamp_min_(threshold)
        out[i:i + CHUNK] = centred / divisor
    return out


@dataclass
class ChannelNorm:
    """Per-channel standardisation: y = (x - mean[c]) / std[c] for every pixel of channel c.

    ``mean``, ``std``: float64 (C,), the mean and the standard deviation (divided by the count, not count - 1)
    over all images and pixels of each channel of the fitting data.
    """

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> "ChannelNorm":
        """Fit on ``x`` (N, C, H, W) of any real dtype (accumulated in float64, chunk by chunk, on x's device;
        the result lives on the CPU). Raises ValueError when a channel is constant."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] < 1:
            raise TypeError(f"x must be a tensor (N, C, H, W) with N >= 1, got "
                            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        c = x.shape[1]
        total = torch.zeros(c, dtype=torch.float64, device=x.device)
        for i in range(0, x.shape[0], CHUNK):
            total += x[i:i + CHUNK].to(torch.float64).sum(dim=(0, 2, 3))
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / count
        sq = torch.zeros(c, dtype=torch.float64, device=x.device)
        for i in range(0, x.shape[0], CHUNK):
            sq += (x[i:i + CHUNK].to(torch.float64) - mean[:, None, None]).square().sum(dim=(0, 2, 3))
        std = (sq / count).sqrt()
        if bool((std == 0).any()):
            raise ValueError(f"channel(s) {(std == 0).nonzero().flatten().tolist()} are constant: no std to divide by")
        return cls(mean.cpu(), std.cpu())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise ``x`` (N, C, H, W) with this transform's C channels; returns float32 of the same shape."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"x must be a tensor (N, {self.mean.shape[0]}, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        mean = self.mean.to(x.device, torch.float32)[:, None, None]
        inv = self.std.reciprocal().to(x.device, torch.float32)[:, None, None]
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for i in range(0, x.shape[0], CHUNK):
            torch.mul(x[i:i + CHUNK].to(torch.float32) - mean, inv, out=out[i:i + CHUNK])
        return out


@dataclass
class ZCA:
    """A fitted ZCA whitening transform (pylearn2 ``preprocessing.ZCA``): y = (x - mean) @ matrix.

    ``mean``: float32 (D,), the per-feature mean of the fitting data. ``matrix``: float32 (D, D) symmetric,
    V diag(1 / sqrt(lambda + filter_bias)) V^T where (lambda, V) is the eigendecomposition of the fitting
    data's covariance (divided by N). Directions with variance lambda >> filter_bias come out with unit
    variance; the bias damps the low-variance ones (their variance becomes lambda / (lambda + filter_bias)).
    """

    mean: torch.Tensor
    matrix: torch.Tensor
    filter_bias: float

    @classmethod
    def fit(cls, x: torch.Tensor, filter_bias: float = 0.1) -> "ZCA":
        """Fit on ``x`` (N, ...) (flattened to (N, D); computed on the CPU, the result lives there).

        N > D: the covariance is accumulated from float32 symmetric rank-k products of centred row chunks into
        float64 (BLAS ``ssyrk``, half the work of a matrix product), then eigendecomposed in float64 (LAPACK
        ``dsyevd``). N <= D (fewer images than features, e.g. a small subset of CIFAR): the same transform is
        built from the eigendecomposition of the N x N Gram matrix instead, which is much cheaper. The matrix is
        stored as float32.
        """
        if not (isinstance(filter_bias, (int, float)) and not isinstance(filter_bias, bool) and filter_bias >= 0):
            raise ValueError(f"filter_bias must be a number >= 0, got {filter_bias!r}")
        flat = _rows(x, "x").cpu()
        n, d = flat.shape
        if n < 2:
            raise ValueError(f"x must hold at least 2 images to fit ZCA, got {n}")
        mean = _mean(flat)
        if n <= d:
            matrix = _matrix_from_gram(flat.to(torch.float64).sub_(mean).numpy(), float(filter_bias))
        else:
            matrix = _matrix_from_covariance(flat, mean.to(torch.float32), float(filter_bias))
        return cls(mean.to(torch.float32), torch.from_numpy(matrix.astype(np.float32)), float(filter_bias))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten ``x`` (N, ...) with D features per row; returns float32 of the same shape."""
        flat = _rows(x, "x")
        if flat.shape[1] != self.mean.shape[0]:
            raise ValueError(f"x has {flat.shape[1]} features per image, the transform was fitted on "
                             f"{self.mean.shape[0]}")
        mean, matrix = self.mean.to(x.device), self.matrix.to(x.device)
        out = torch.empty(flat.shape, dtype=torch.float32, device=x.device)
        for i in range(0, flat.shape[0], CHUNK):
            torch.mm(flat[i:i + CHUNK].to(torch.float32) - mean, matrix, out=out[i:i + CHUNK])
        return out.view(x.shape)


def _mean(flat: torch.Tensor) -> torch.Tensor:
    """Per-feature mean of ``flat`` (N, D) in float64, summed chunk by chunk."""
    total = torch.zeros(flat.shape[1], dtype=torch.float64, device=flat.device)
    for i in range(0, flat.shape[0], CHUNK):
        total += flat[i:i + CHUNK].to(torch.float64).sum(dim=0)
    return total / flat.shape[0]


def _matrix_from_covariance(flat: torch.Tensor, mean: torch.Tensor, bias: float) -> np.ndarray:
    """V diag((lambda + bias)^-1/2) V^T from the covariance of ``flat`` (N, D) about ``mean``; float64 (D, D)."""
    n, d = flat.shape
    upper = np.zeros((d, d), dtype=np.float64)  # upper triangle of sum_i c_i c_i^T
    for i in range(0, n, CHUNK):
        centred = (flat[i:i + CHUNK].to(torch.float32) - mean).numpy()
        upper += blas.ssyrk(1.0, centred.T, trans=0, lower=0)  # centred.T @ centred, F-ordered: no copy
    upper /= n
    upper[np.diag_indices(d)] += bias
    eigvals, eigvecs = scipy.linalg.eigh(upper, lower=False, driver="evd", overwrite_a=True, check_finite=False)
    if eigvals[0] <= 0:
        raise ValueError("the covariance plus filter_bias is not positive definite; use filter_bias > 0")
    half = eigvecs * eigvals ** -0.25  # matrix = half @ half.T
    matrix = np.triu(blas.dsyrk(1.0, half, trans=0, lower=0))
    matrix += np.triu(matrix, 1).T
    return matrix


def _matrix_from_gram(centred: np.ndarray, bias: float) -> np.ndarray:
    """The same matrix for centred (N, D) float64 data with N <= D, via the N x N Gram matrix.

    With centred = U S W^T, the covariance is W diag(s^2 / N) W^T and has eigenvalue 0 off span(W), so
    matrix = bias^-1/2 I + W diag((s^2 / N + bias)^-1/2 - bias^-1/2) W^T. Directions with s^2 below 1e-12 of the
    largest are dropped: their coefficient is ~0 (and W is undefined there).
    """
    if bias <= 0:
        raise ValueError("with no more images than features the covariance is singular; use filter_bias > 0")
    n, d = centred.shape
    s2, u = scipy.linalg.eigh(centred @ centred.T, check_finite=False)
    keep = s2 > max(float(s2.max()), 0.0) * 1e-12
    s2 = s2[keep]
    w = (centred.T @ u[:, keep]) / np.sqrt(s2)  # (D, r), orthonormal columns
    matrix = (w * ((s2 / n + bias) ** -0.5 - bias ** -0.5)) @ w.T
    matrix[np.diag_indices(d)] += bias ** -0.5
    return matrix
