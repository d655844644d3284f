"""KD loss forward and forward+backward (w.r.t. the student logits), fp32, at the issue's shapes.

Variants: ``fused`` (C++ kernel, ``fitnets_fast.cpp.kd_loss_impl``), ``reference`` (eager), ``compiled``
(``torch.compile`` of the reference).
The paper's settings: T = 3, lam = 4, student softened at T too, mean reduction.
"""
import pytest
import torch

from fitnets_fast import cpp, reference
from conftest import grad_of, no_grad, rounds

SHAPES = [(128, 10), (128, 100), (1024, 1000), (4096, 32000)]


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{b}x{c}" for b, c in SHAPES])
def test_kd_loss(interleaved, shape, mode):
    b, c = shape
    big = b * c > 10**7
    torch.manual_seed(0)
    s = torch.randn(b, c, requires_grad=mode != "fwd")
    t, y = torch.randn(b, c), torch.randint(0, c, (b,))
    torch._dynamo.reset()
    compiled = torch.compile(reference.kd_loss_impl, dynamic=False)
    wrap = no_grad if mode == "fwd" else grad_of
    variants = {name: wrap(fn, (s, t, y)) for name, fn in
                [("fused", cpp.kd_loss_impl), ("reference", reference.kd_loss_impl), ("compiled", compiled)]}
    n_rounds = rounds(3) if big else rounds(25)
    interleaved(variants, n_rounds, op="kd_loss", shape=f"{b}x{c}", mode=mode, min_bytes=3 * 4 * b * c)
