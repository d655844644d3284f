"""The backends every contract test in this folder runs on, and how to reach their ``<op>_impl`` functions.

Triton runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (set by ``tests/conftest.py``
when there is no GPU); cpp needs the compiled extension. A backend that cannot run here is skipped with
the reason.
"""
import pytest
import torch

from fitnets_fast import _backend

DEVICES = {"reference": "cpu", "cpp": "cpu", "triton": "cuda" if torch.cuda.is_available() else "cpu"}
FUSED = ("cpp", "triton")


def _params(names):
    params = []
    for name in names:
        reason = _backend.unavailable_reason(name)
        if name == "triton" and reason is None and not torch.cuda.is_available() and not _backend._TRITON_INTERPRET:
            reason = "no CUDA and TRITON_INTERPRET is not 1"
        params.append(pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=str(reason))))
    return params


ALL_PARAMS = _params(_backend.BACKENDS)
FUSED_PARAMS = _params(FUSED)


def impl(backend: str, op: str):
    """The backend's ``<op>_impl``."""
    return getattr(_backend.module(backend), f"{op}_impl")


def randn(backend: str, *shape) -> torch.Tensor:
    """float64 normal samples on the backend's device."""
    return torch.randn(*shape, dtype=torch.float64, device=DEVICES[backend])


NAN, INF = float("nan"), float("inf")


def check(backend: str, op: str, tensors, rest, dtype: torch.dtype, names, view=lambda *a: a) -> None:
    """``ops.<op>(*view(*tensors), *rest, backend=backend)`` against the reference op, forward and every
    gradient, with the kernel's outputs poisoned (``check_against_reference``)."""
    from fitnets_fast import ops, reference
    from fitnets_fast.testing import check_against_reference

    check_against_reference(lambda *ts: getattr(ops, op)(*view(*ts), *rest, backend=backend),
                            lambda *ts: getattr(reference, op)(*view(*ts), *rest), list(tensors), dtype, names=names)
