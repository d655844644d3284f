"""Kernel-vs-reference checks: the harness of this project's kernel tests and of ``benchmarks/gpu_check.py``,
usable for any function that claims to compute what a plain-PyTorch reference does.

The rule: a kernel's error against the float64 reference must be no worse than the
reference's own error in the same dtype, plus a small tolerance. ``check_against_reference`` runs

* the reference in float64 (the truth),
* the reference in ``dtype`` (its own rounding error),
* the kernel in ``dtype`` with its output buffers poisoned (``fitnets_fast._alloc.poisoned``),

on the same fresh random inputs, forward and every floating input's gradient, and compares.

Precision is explicit: every run happens under ``tf32(enabled)`` (TF32 off unless the check asks for it),
and the tolerance is scaled to the precision actually used (``precision_eps``): the dtype's epsilon, or
2^-10 (TF32's 10-bit mantissa) for float32 with TF32 allowed, since a TF32 product can be off by that much
relative to float32 whatever the kernel does.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence

import torch

from fitnets_fast import _alloc

# Relative tolerance added on top of the reference's own error, in units of the precision's epsilon.
EPS_MARGIN = 16
# Relative spacing of TF32 numbers at 1: its mantissa keeps 10 of float32's 23 bits.
TF32_EPS = 2.0 ** -10


def precision_eps(dtype: torch.dtype, tf32: bool = False) -> float:
    """Epsilon of the arithmetic a kernel on ``dtype`` may use: ``TF32_EPS`` for float32 with TF32 allowed,
    else the dtype's own."""
    return TF32_EPS if tf32 and dtype == torch.float32 else torch.finfo(dtype).eps


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 for float32 convolutions and matmuls inside the block, then restore the flags.

    Set through the legacy flags (which keep cuDNN's convolution and RNN flags equal, so reading
    ``torch.backends.cudnn.allow_tf32`` stays legal). Restored through the legacy flags when they were
    readable on entry, else (a state set with the ``fp32_precision`` flags, which makes the legacy read
    raise) through those flags, so the state comes back unchanged.
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    try:
        saved, legacy = (cudnn.allow_tf32, matmul.allow_tf32), True
    except RuntimeError:
        leaves = (cudnn.conv, cudnn.rnn, matmul)
        saved, legacy = tuple(m.fp32_precision for m in leaves), False
    cudnn.allow_tf32 = matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        if legacy:
            cudnn.allow_tf32, matmul.allow_tf32 = saved
        else:
            for module, value in zip(leaves, saved):
                module.fp32_precision = value


def _run(fn: Callable, inputs: Sequence, dtype: torch.dtype, grad_seed: int):
    cast = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            x = x.detach().to(dtype).requires_grad_(True)
        cast.append(x)
    out = fn(*cast)
    g = torch.Generator(device="cpu").manual_seed(grad_seed)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device=out.device, dtype=dtype)
    diff = [x for x in cast if isinstance(x, torch.Tensor) and x.requires_grad]
    grads = torch.autograd.grad(out, diff, grad_out, allow_unused=True) if out.requires_grad else [None] * len(diff)
    return [out.detach()] + [None if gr is None else gr.detach() for gr in grads]


def check_against_reference(kernel_fn: Callable, reference_fn: Callable, inputs: Sequence, dtype: torch.dtype,
                            *, names: Optional[Sequence[str]] = None, margin: float = EPS_MARGIN,
                            allow_reference_error: bool = True, allow_tf32: bool = False) -> None:
    """Assert the kernel is as accurate as the reference in ``dtype``, for the output and every gradient.

    ``inputs``: float64 tensors (and any non-float arguments, passed through) in call order.
    ``allow_reference_error=False`` drops the reference's own error from the bound (the kernel must then be
    within ``margin`` eps of the float64 result): for inputs that ``dtype`` represents exactly, where the
    reference in ``dtype`` is known to lose digits that a kernel need not (logits with a large offset).
    ``allow_tf32``: all three runs happen with TF32 allowed (else forbidden) and eps is
    ``precision_eps(dtype, allow_tf32)``; a bound is ``reference error + margin * eps * max|truth|``.
    """
    with tf32(allow_tf32):
        truth = _run(reference_fn, inputs, torch.float64, grad_seed=1)
        ref = _run(reference_fn, inputs, dtype, grad_seed=1) if allow_reference_error else [None] * len(truth)
        with _alloc.poisoned():
            got = _run(kernel_fn, inputs, dtype, grad_seed=1)
    labels = ["output"] + list(names or [f"grad[{i}]" for i in range(len(truth) - 1)])
    eps = precision_eps(dtype, allow_tf32)
    for label, t, r, k in zip(labels, truth, ref, got):
        if t is None:
            assert k is None or torch.all(k == 0), f"{label}: kernel gives a gradient where the reference has none"
            continue
        assert k is not None, f"{label}: kernel gave no gradient"
        assert k.shape == t.shape, f"{label}: shape {tuple(k.shape)} != {tuple(t.shape)}"
        t64, k64 = t.double(), k.double()
        r64 = r.double() if allow_reference_error else None
        assert torch.equal(torch.isnan(k64), torch.isnan(t64)), f"{label}: NaN pattern differs from the reference"
        finite = torch.isfinite(t64)
        assert torch.equal(k64[~finite].nan_to_num(), t64[~finite].nan_to_num()), f"{label}: inf values differ"
        if not finite.any():
            continue
        scale = t64[finite].abs().max().item() or 1.0
        ref_err = (r64 - t64)[finite].abs().max().item() if allow_reference_error else 0.0
        ker_err = (k64 - t64)[finite].abs().max().item()
        bound = 1.0 * ref_err + margin * eps * scale
        assert ker_err <= bound, (
            f"{label} ({dtype}{', tf32' if allow_tf32 else ''}): kernel error {ker_err:.3e} > reference error {ref_err:.3e} + "
            f"{margin}*eps*{scale:.3e} = {bound:.3e}"
        )


def offset_logits(n: int, k: int, offset: float = 1000.0, device: str = "cpu") -> torch.Tensor:
    """``(n, k)`` float64 logits around ``offset`` (spread 3), rounded to values float32 represents exactly."""
    return (torch.randn(n, k, dtype=torch.float64, device=device) * 3 + offset).float().double()
