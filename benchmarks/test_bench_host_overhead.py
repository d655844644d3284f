"""Host cost of one call of the Triton ops with the kernel launch itself stubbed out, beside eager ops.

On a GPU the launches are asynchronous, so what a training step waits for on the host is everything around
them: ``torch.library.triton_op`` dispatch, autograd set-up, allocation, argument packing. Here every
``wrap_triton(kernel)[grid](...)`` is recorded and dropped (``aot_check.record_launches``) on tiny CPU
tensors, so the time per call is that host path alone. Variants: ``triton maxout_conv2d`` /
``triton kd_loss`` (forward with autograd, the path a training step takes), ``eager conv2d`` (``F.conv2d``
at the same tiny shape) and ``eager add`` (the cheapest dispatched op).
"""
import pytest
import torch
import torch.nn.functional as F

from fitnets_fast import _backend
from conftest import rounds

kernels = _backend.module("triton")
if kernels is None:  # pragma: no cover
    pytest.skip(f"triton kernels unavailable: {_backend.unavailable_reason('triton')}", allow_module_level=True)

from fitnets_fast.kernels.aot_check import record_launches  # noqa: E402

CALLS = 200  # calls per timed sample, so the per-call figure is well above the timer's resolution


def test_host_overhead_per_call(interleaved):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    s, t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
    y = torch.randint(0, 10, (4,))

    def repeat(fn):
        def run():
            with record_launches() as launches:
                for _ in range(CALLS):
                    fn()
                    launches.clear()
        return run

    variants = {
        "triton maxout_conv2d": repeat(lambda: kernels.maxout_conv2d_impl(x, w, b, 2, 1, 1)),
        "triton kd_loss": repeat(lambda: kernels.kd_loss_impl(s, t, y)),
        "eager conv2d": repeat(lambda: F.conv2d(x, w, b, 1, 1)),
        "eager add": repeat(lambda: torch.add(s, t)),
    }
    result = interleaved(variants, rounds(), op="host_overhead", shape="tiny", mode="fwd (autograd on)",
                         calls_per_sample=CALLS)
    per_call_us = {name: 1e3 * v["median_ms"] / CALLS for name, v in result.items()}
    print("per-call host time (us):", {k: round(v, 1) for k, v in per_call_us.items()})
    assert all(v > 0 for v in per_call_us.values())
