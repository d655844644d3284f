"""The fused C++ optimiser updates and max-norm (``fitnets_fast.cpp.optim``) against the foreach ops.

The foreach path (``fused=False``) is the reference: in float64 the fused pass must agree to rounding; in
float32 its error against the float64 reference must be no worse than the float32 foreach path's own, plus
a small tolerance. Sizes are not powers of two, and the weights include channels-last conv kernels.
"""
import pytest
import torch
import torch.nn as nn

from fitnets_fast import _backend
from fitnets_fast.nn import MaxoutConv2d, MaxoutLinear
from fitnets_fast.optim import MaxNorm, Momentum, RMSProp

pytestmark = pytest.mark.skipif(_backend.module("cpp") is None,
                                reason=f"C++ kernels unavailable: {_backend.unavailable_reason('cpp')}")


def _shapes():
    """Parameter shapes of a small maxout net (one weight large enough to be cut into several chunks)."""
    return [(30, 3, 5, 5), (30, 7, 9), (26, 15, 3, 3), (26,), (7, 333), (7,), (200_003,)]


def _make_params(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in _shapes():
        t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        if t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        params.append(nn.Parameter(t))
    return params


def _grads(params, step, scale):
    g = torch.Generator().manual_seed(1000 + step)
    out = []
    for p in params:
        grad = (torch.randn(p.shape, generator=g, dtype=torch.float64) * scale).to(p.dtype)
        out.append(grad.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else grad)
    return out


def _run(optimizer_cls, kwargs, dtype, fused, steps=4):
    """Parameters after ``steps`` updates (two groups with different lr_scale) on fixed random gradients."""
    params = _make_params(dtype, seed=0)
    opt = optimizer_cls([{"params": params[:3], "lr_scale": 1.0}, {"params": params[3:], "lr_scale": 0.05}],
                        fused=fused, **kwargs)
    for step in range(steps):
        # tiny gradients too, so that RMSProp's floor is reached
        for p, grad in zip(params, _grads(params, step, scale=10.0 ** (-step))):
            p.grad = grad
        opt.step()
    return [p.detach() for p in params]


_OPTIMIZERS = [(RMSProp, dict(lr=0.005, decay=0.9, floor=1e-5)), (Momentum, dict(lr=0.1, momentum=0.7))]


@pytest.mark.parametrize("optimizer_cls, kwargs", _OPTIMIZERS)
def test_fused_update_matches_foreach_in_float64(optimizer_cls, kwargs):
    fused = _run(optimizer_cls, kwargs, torch.float64, fused=True)
    foreach = _run(optimizer_cls, kwargs, torch.float64, fused=False)
    for a, b in zip(fused, foreach):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("optimizer_cls, kwargs", _OPTIMIZERS)
def test_fused_update_in_float32_is_as_accurate_as_foreach(optimizer_cls, kwargs):
    exact = _run(optimizer_cls, kwargs, torch.float64, fused=False)
    fused = _run(optimizer_cls, kwargs, torch.float32, fused=True)
    foreach = _run(optimizer_cls, kwargs, torch.float32, fused=False)
    for e, a, b in zip(exact, fused, foreach):
        fused_error = (a.double() - e).abs().max().item()
        foreach_error = (b.double() - e).abs().max().item()
        assert fused_error <= foreach_error + 1e-6 * e.abs().max().item()


def test_default_is_fused_and_identical_to_fused_true():
    for a, b in zip(_run(*_OPTIMIZERS[0], torch.float32, fused=None), _run(*_OPTIMIZERS[0], torch.float32, fused=True)):
        assert torch.equal(a, b)


def test_gradient_in_another_layout_falls_back_to_foreach_or_refuses():
    def stepped(fused):
        p = nn.Parameter(torch.arange(12.0, dtype=torch.float64).view(3, 4))
        opt = RMSProp([p], lr=0.01, fused=fused)
        p.grad = torch.arange(12.0, dtype=torch.float64).view(4, 3).t()  # same values order, transposed strides
        opt.step()
        return p.detach()

    assert torch.equal(stepped(None), stepped(False))
    with pytest.raises(ValueError, match="fused=True.*memory layout"):
        stepped(True)


def test_bfloat16_parameters_use_foreach_and_refuse_fused_true():
    p = nn.Parameter(torch.ones(5, dtype=torch.bfloat16))
    p.grad = torch.full((5,), 0.5, dtype=torch.bfloat16)
    RMSProp([p], lr=0.1).step()
    assert p.detach().tolist() == pytest.approx([1 - 0.1 / 0.1 ** 0.5] * 5, rel=1e-2)
    p.grad = torch.full((5,), 0.5, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="float32 and float64"):
        RMSProp([p], lr=0.1, fused=True).step()


def _max_norm_layers(dtype):
    torch.manual_seed(3)
    conv = MaxoutConv2d(3, 7, 5, pieces=3, max_norm=1.1).to(dtype).to(memory_format=torch.channels_last)
    lin = MaxoutLinear(333, 5, pieces=2, max_norm=0.7).to(dtype)
    with torch.no_grad():
        conv.weight.normal_()
        conv.weight[0].mul_(1e-3)     # within the limit: untouched
        conv.weight[1].zero_()        # a zero row stays zero
        conv.weight[2].mul_(1.1 / conv.weight[2].norm())   # at the limit (up to rounding)
        lin.weight.normal_()
    return nn.ModuleList([conv, lin])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_max_norm_matches_foreach(dtype):
    exact = _max_norm_layers(torch.float64)
    MaxNorm([exact], fused=False).apply()
    results = {}
    for fused in (True, False):
        layers = _max_norm_layers(dtype)
        before = [m.weight.detach().clone() for m in layers]
        MaxNorm([layers], fused=fused).apply()
        results[fused] = [m.weight.detach() for m in layers]
        assert torch.equal(results[fused][0][0], before[0][0]) and torch.equal(results[fused][0][1], before[0][1])
    for e, a, b in zip([m.weight.detach() for m in exact], results[True], results[False]):
        assert a.stride() == b.stride()
        fused_error = (a.double() - e).abs().max().item()
        foreach_error = (b.double() - e).abs().max().item()
        assert fused_error <= foreach_error + (1e-15 if dtype == torch.float64 else 1e-7)
        norms = a.double().flatten(1).norm(dim=1)
        limit = 1.1 if a.dim() == 4 else 0.7
        assert torch.all(norms <= limit * (1 + 4 * torch.finfo(dtype).eps))


def test_max_norm_fused_true_refuses_weights_it_cannot_take():
    lin = MaxoutLinear(6, 2, pieces=2, max_norm=0.5).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    with pytest.raises(ValueError, match="fused=True"):
        MaxNorm([lin], fused=True).apply()
    MaxNorm([lin]).apply()   # fused=None: the foreach ops
    assert lin.weight.float().norm(dim=1).tolist() == pytest.approx([0.5] * 4, rel=1e-2)


def test_fused_updates_count_as_in_place_changes_for_autograd():
    w = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    loss = (w * w).sum()   # saves w for its backward
    w.grad = torch.ones_like(w)
    version = w._version
    RMSProp([w], lr=0.1, fused=True).step()
    assert w._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    lin = MaxoutLinear(3, 2, pieces=2, max_norm=0.1).double()
    with torch.no_grad():
        lin.weight.fill_(1.0)   # every row above the limit
    version = lin.weight._version
    MaxNorm([lin], fused=True).apply()
    assert lin.weight._version > version
