"""Dropout on the C++ kernel: one pass that draws the mask and applies it, and a backward that redraws it.

``dropout(x, p, scale)`` = ``x * mask * scale`` with ``mask`` 1 with probability ``1 - p``, the formulation of
``torch.rand_like(x).ge_(p).mul_(scale)`` that the maxout teachers use on their layers' inputs (``scale``:
``1/(1-p)`` as ``F.dropout``, or pylearn2's unscaled first layer), NaN propagating as in ``x * mask``. The
mask comes from a hash of a 64-bit seed and the element's position in memory (``csrc/dropout.cpp``), so it
is neither drawn by PyTorch's sequential Mersenne twister (``uniform_`` took 3% of the MNIST teacher's
training step on two cores, and the mask's own ops 1% more) nor stored: the backward applies the same mask to
the gradient. The seed is drawn from PyTorch's default generator (one ``torch.randint`` per call), so
``torch.manual_seed`` makes the masks reproducible; the masks differ from ``rand_like``'s.
"""
from __future__ import annotations

import torch

from .. import _C
from . import _common

__all__ = ["dropout", "supports"]


def supports(x: torch.Tensor) -> bool:
    """True if the kernel takes ``x``: a plain CPU tensor of float32, float64 or bfloat16."""
    return type(x) in (torch.Tensor, torch.nn.Parameter) and x.is_cpu and x.dtype in _common._DTYPE_NAMES


def _apply(src: torch.Tensor, seed: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    src = src if _common.is_dense(src) else src.contiguous()
    out = torch.empty_like(src)   # a dense input's strides: element i of both is the same position
    _C.dropout_apply(_common.dtype_name(src), src.data_ptr(), out.data_ptr(), src.numel(), int(seed), float(p),
                     float(scale), _common.threads())
    return out


def _apply_fake(src, seed, p, scale):
    return torch.empty_like(src if _common.is_dense(src) else src.contiguous())


def _setup_context(ctx, inputs, output):
    _src, seed, p, scale = inputs
    ctx.save_for_backward(seed)
    ctx.args = (p, scale)
    ctx.layout = (output.shape, output.stride())


def _backward(ctx, grad_out):
    (seed,) = ctx.saved_tensors
    shape, stride = ctx.layout
    if grad_out.stride() != stride:   # the mask follows memory positions: lay the gradient out as the output
        grad_out = torch.empty_strided(shape, stride, dtype=grad_out.dtype).copy_(grad_out)
    return _apply_op(grad_out, seed, *ctx.args), None, None, None


_apply_op = _common.fused_op("fitnets_fast_cpp::dropout", _apply, _apply_fake, _setup_context, _backward,
                             used_by="the maxout teachers' dropout")


def dropout(x: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """``x * mask * scale``, each element of ``mask`` 1 with probability ``1 - p`` (``0 <= p <= 1``), else 0;
    same shape, dtype and (dense) strides as ``x``. ``supports(x)`` must hold."""
    seed = torch.randint(-(2 ** 63), 2 ** 63 - 1, (), dtype=torch.int64)
    return _apply_op(x, seed, float(p), float(scale))
