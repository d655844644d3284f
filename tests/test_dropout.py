"""The teachers' input dropout on the C++ kernel (``fitnets_fast.cpp.dropout``) and its place in the models.

The kernel's mask is random, so it is checked by what must hold for any mask (values are ``x * scale`` or
``x * 0``, the backward applies the forward's mask) and by statistics with bounds of five standard deviations
(the keep rate, independence of neighbouring elements and of successive calls).
"""
import math

import pytest
import torch

from fitnets_fast import _backend, models

cpp = _backend.module("cpp")
pytestmark = pytest.mark.skipif(cpp is None, reason=f"C++ kernels unavailable: {_backend.unavailable_reason('cpp')}")


def _within_5_sigma(fraction: float, prob: float, n: int) -> bool:
    return abs(fraction - prob) <= 5 * math.sqrt(prob * (1 - prob) / n) + 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p, scale", [(0.2, 1.0), (0.5, 2.0), (0.9, 10.0)])
def test_values_are_scaled_or_zero_and_the_keep_rate_is_one_minus_p(p, scale, dtype):
    x = (torch.rand(7, 13, 101, 53, dtype=torch.float64) + 0.5).to(dtype)   # nonzero: kept elements show
    y = cpp.dropout.dropout(x, p, scale)
    assert y.dtype == dtype and y.shape == x.shape and y.stride() == x.stride()
    kept = y != 0
    arith = torch.float64 if dtype == torch.float64 else torch.float32   # bfloat16: rounded once, after the product
    expected = (x.to(arith) * scale).to(dtype)
    assert torch.equal(y[kept], expected[kept])
    assert _within_5_sigma(kept.double().mean().item(), 1 - p, x.numel())


def test_p_zero_keeps_everything_and_p_one_drops_everything():
    x = torch.randn(3, 1001)
    assert torch.equal(cpp.dropout.dropout(x, 0.0, 1.0), x)
    assert torch.equal(cpp.dropout.dropout(x, 1.0, 5.0), torch.zeros_like(x))


def test_nan_propagates_where_dropped_as_in_x_times_mask():
    x = torch.full((4099,), float("nan"))
    assert torch.isnan(cpp.dropout.dropout(x, 0.5, 2.0)).all()


@pytest.mark.parametrize("grad_layout", ["same", "contiguous"])
def test_backward_applies_the_forward_mask(grad_layout):
    x = (torch.rand(6, 10, 33, 35, dtype=torch.float64) + 0.5).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = cpp.dropout.dropout(x, 0.3, 1 / 0.7)
    grad = torch.randn(y.shape, dtype=torch.float64)
    if grad_layout == "same":
        grad = grad.contiguous(memory_format=torch.channels_last)
    (gx,) = torch.autograd.grad(y, x, grad)
    assert torch.equal(gx, grad * (y != 0) * (1 / 0.7))


def test_non_dense_input_is_taken_through_a_copy():
    base = torch.rand(20, 30, dtype=torch.float64) + 0.5
    x = base[:, ::3]
    y = cpp.dropout.dropout(x, 0.5, 2.0)
    kept = y != 0
    assert torch.equal(y[kept], (x * 2.0)[kept])


def test_masks_follow_the_default_generator_and_differ_between_calls():
    x = torch.ones(250_007)
    torch.manual_seed(5)
    first, second = cpp.dropout.dropout(x, 0.5, 1.0), cpp.dropout.dropout(x, 0.5, 1.0)
    torch.manual_seed(5)
    assert torch.equal(cpp.dropout.dropout(x, 0.5, 1.0), first)
    # two independent masks agree on about half the elements (both kept: 1/4, both dropped: 1/4)
    assert _within_5_sigma((first == second).double().mean().item(), 0.5, x.numel())


@pytest.mark.parametrize("offset", [1, 2, 64, 1 << 15])   # neighbours, in one task and across tasks
def test_elements_are_kept_independently_of_their_neighbours(offset):
    n = 1_000_003
    kept = cpp.dropout.dropout(torch.ones(n), 0.5, 1.0) != 0
    both = (kept[:-offset] & kept[offset:]).double().mean().item()
    assert _within_5_sigma(both, 0.25, n - offset)


def test_traced_by_torch_compile_without_graph_breaks():
    x = torch.rand(5, 77, dtype=torch.float64) + 0.5
    compiled = torch.compile(lambda t: cpp.dropout.dropout(t, 0.5, 2.0), backend="eager", fullgraph=True)
    y = compiled(x)
    kept = y != 0
    assert torch.equal(y[kept], (x * 2.0)[kept]) and 0 < kept.sum() < x.numel()


@pytest.mark.parametrize("backend, uses_kernel", [("auto", True), ("cpp", True), ("reference", False)])
def test_teacher_dropout_uses_the_kernel_unless_the_reference_is_asked_for(backend, uses_kernel):
    x = torch.rand(4, 1, 28, 28) + 0.5
    torch.manual_seed(1)
    y = models.input_dropout(x, 0.2, 1.0, backend)
    torch.manual_seed(1)
    with_rand_like = x * torch.rand_like(x).ge_(0.2)
    assert torch.equal(y, with_rand_like) != uses_kernel
    net = models.build("teacher_mnist", backend=backend).train()
    torch.manual_seed(2)
    net(x).sum().backward()   # dropout on every layer's input, forward and backward
    assert all(p.grad is not None for p in net.parameters())
