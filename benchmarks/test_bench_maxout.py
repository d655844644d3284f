"""Maxout forward and forward+backward at the paper's activation shapes (N=128), fp32.

Variants: ``fused`` (C++ kernel, ``fitnets_fast.cpp.maxout_impl``), ``reference`` (eager
``max(dim).values``), ``amax`` (eager ``view(N, C, k, H, W).amax(2)``, the issue's baseline),
``compiled`` (``torch.compile`` of the reference) and ``copy`` (``copy_`` of an input-sized tensor into a
preallocated buffer: the memory roofline).
"""
import pytest
import torch

from fitnets_fast import cpp, reference
from conftest import amax_maxout, grad_of, no_grad, rounds

N = 128
SHAPES = [(96, 2, 32), (192, 2, 16), (192, 4, 8), (32, 2, 32), (80, 2, 16), (128, 2, 8)]  # (C, k, H=W)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{c}x{k}x{h}" for c, k, h in SHAPES])
def test_maxout(interleaved, shape, mode):
    c, k, h = shape
    torch.manual_seed(0)
    x = torch.randn(N, c * k, h, h, requires_grad=mode != "fwd")
    grad_out = torch.randn(N, c, h, h)
    torch._dynamo.reset()
    compiled = torch.compile(reference.maxout_impl, dynamic=False)
    wrap = no_grad if mode == "fwd" else (lambda f, ins: grad_of(f, ins, grad_out))
    buffer = torch.empty_like(x.detach())
    source = x.detach()
    variants = {
        "fused": wrap(cpp.maxout_impl, (x, k)),
        "reference": wrap(reference.maxout_impl, (x, k)),
        "amax": wrap(amax_maxout, (x, k)),
        "compiled": wrap(compiled, (x, k)),
        "copy": lambda: buffer.copy_(source),
    }
    s = N * c * h * h
    min_bytes = 4 * s * (k + 1) if mode == "fwd" else 4 * s * (2 * k + 2)
    interleaved(variants, rounds(), op="maxout", shape=f"{N}x{c}*{k}x{h}x{h}", mode=mode, min_bytes=min_bytes,
                copy_bytes=2 * 4 * s * k)
