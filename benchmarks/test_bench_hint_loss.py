"""Hint loss (maxout-conv regressor + L2) forward and forward+backward, fp32, N=128.

Shapes: FitNet 4's regressor from the CIFAR teacher (guided (80, 8, 8) -> hint (192, 7, 7): 2x2 kernel,
2 pieces, see ``models.build_regressor``) and the baseline's (32, 16, 16) -> (192, 8, 8) with a 9x9 kernel.
Variants: ``fused`` (bias-free conv + C++ epilogue, ``fitnets_fast.cpp.hint_loss_impl``), ``reference``
(eager), ``compiled``.
"""
import pytest
import torch

from fitnets_fast import cpp, reference
from conftest import grad_of, no_grad, rounds

N = 128
CONFIGS = {"fitnet4_regressor_80x8x8_to_192x7x7_k2": (80, 8, 192, 7, 2),
           "32x16x16_to_192x8x8_k9": (32, 16, 192, 8, 2)}


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_hint_loss(interleaved, config, mode):
    cg, hg, ch, hh, pieces = CONFIGS[config]
    kernel = hg - hh + 1
    torch.manual_seed(0)
    grad = mode != "fwd"
    g = torch.randn(N, cg, hg, hg, requires_grad=grad)
    h = torch.randn(N, ch, hh, hh)
    w = (0.05 * torch.randn(ch * pieces, cg, kernel, kernel)).requires_grad_(grad)
    b = torch.zeros(ch * pieces, requires_grad=grad)
    torch._dynamo.reset()
    compiled = torch.compile(reference.hint_loss_impl, dynamic=False)
    wrap = no_grad if mode == "fwd" else grad_of
    ins = (g, h, w, b, pieces)
    variants = {name: wrap(fn, ins) for name, fn in
                [("fused", cpp.hint_loss_impl), ("reference", reference.hint_loss_impl), ("compiled", compiled)]}
    interleaved(variants, rounds(), op="hint_loss", shape=config, mode=mode)
