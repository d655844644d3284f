"""Which implementation runs an op: the plain-PyTorch reference, the C++ CPU kernels or the Triton kernels.

A backend is a module (unavailable if it cannot be imported) exposing ``<op>_impl`` functions with the signatures of ``fitnets_fast.reference``:

* ``"reference"``: ``fitnets_fast.reference`` (always available, any device and dtype);
* ``"cpp"``: ``fitnets_fast.cpp`` (needs the compiled ``fitnets_fast._C``; CPU tensors, float32/float64, and
  bfloat16 for the maxout ops, which is what they get under ``torch.autocast("cpu")``);
* ``"triton"``: ``fitnets_fast.kernels`` (needs triton; CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1``, which is how CI runs the kernels).

``"auto"`` picks triton for CUDA tensors, cpp for CPU tensors of a dtype it supports, and the reference for
anything else or for an op a backend does not implement. A backend asked for by name that cannot run the
call is an error. ``use_backend(name)`` changes what ``"auto"`` means inside a ``with`` block.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from types import ModuleType
from typing import Iterator, Optional

import torch

BACKENDS = ("reference", "cpp", "triton")
OPS = ("maxout", "maxout_conv2d", "maxout_linear", "hint_loss", "kd_loss")
_MODULES = {"reference": "fitnets_fast.reference", "cpp": "fitnets_fast.cpp", "triton": "fitnets_fast.kernels"}
_CPP_DTYPES = (torch.float32, torch.float64)
_CPP_BF16_OPS = ("maxout", "maxout_conv2d", "maxout_linear")  # the losses run in float32 under autocast

# Read once at import: the Triton interpreter must be chosen before triton is imported anyway.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# A plain global (not a ContextVar) so that torch.compile traces the dispatch without a graph break.
_default = {"backend": "auto"}
_loaded: dict[str, Optional[ModuleType]] = {}
_load_errors: dict[str, str] = {}


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, ops called with ``backend="auto"`` use ``name`` ("auto" restores the default)."""
    check_name(name)
    previous, _default["backend"] = _default["backend"], name
    try:
        yield
    finally:
        _default["backend"] = previous


def module(name: str) -> Optional[ModuleType]:
    """The backend's module, imported on first use, or None if it cannot be imported here."""
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except Exception as exc:  # ImportError (extension not built, no triton), or a broken toolchain
            _loaded[name] = None
            _load_errors[name] = f"{type(exc).__name__}: {exc}"
    return _loaded[name]


def preload() -> None:
    """Import the backends "auto" may pick here, so that dispatch inside ``torch.compile`` never imports.

    Triton is imported only where CUDA is available (elsewhere it runs only when asked for by name, in
    tests under the interpreter).
    """
    module("reference")
    module("cpp")
    if torch.cuda.is_available():
        module("triton")


def unavailable_reason(name: str) -> Optional[str]:
    module(name)
    return _load_errors.get(name)


def implements(name: str, op: str) -> bool:
    mod = module(name)
    return mod is not None and hasattr(mod, f"{op}_impl")


def resolve(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs ``op`` on tensors of ``device``/``dtype`` when the caller asked for ``backend``."""
    check_name(backend)
    if backend == "auto":
        backend = _default["backend"]
    if backend == "auto":
        return _auto(op, device, dtype)
    problem = _cannot_run(backend, op, device, dtype)
    if problem:
        raise ValueError(f"backend={backend!r} cannot run {op} here: {problem}")
    return backend


def impl(op: str, backend: str, device: torch.device, dtype: torch.dtype):
    """The ``<op>_impl`` function that runs this call."""
    return getattr(module(resolve(op, backend, device, dtype)), f"{op}_impl")


def _auto(op: str, device: torch.device, dtype: torch.dtype) -> str:
    preferred = "triton" if device.type == "cuda" else "cpp"
    return "reference" if _cannot_run(preferred, op, device, dtype) else preferred


def _cannot_run(backend: str, op: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if module(backend) is None:
        return f"the {backend} backend is unavailable ({_load_errors.get(backend)})"
    if not implements(backend, op):
        return f"the {backend} backend does not implement {op}"
    if backend == "cpp":
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, got {device}"
        if dtype not in _CPP_DTYPES and not (dtype == torch.bfloat16 and op in _CPP_BF16_OPS):
            return f"the cpp backend supports float32 and float64 (and bfloat16 for the maxout ops), got {dtype}"
    if backend == "triton" and device.type != "cuda" and not _TRITON_INTERPRET:
        return f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1), got {device}"
    return None


def check_name(name: str) -> str:
    """Return ``name`` if it is "auto" or a known backend, else raise ValueError."""
    if name not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    return name


def choices() -> dict[str, dict[str, str]]:
    """For each op, the backend ``"auto"`` picks for float32 tensors on CPU (``"cpu"``) and on CUDA, and for
    the bfloat16 tensors CPU autocast gives the maxout ops (``"cpu_bf16"``)."""
    table = {}
    for op in OPS:
        table[op] = {
            "cpu": _auto(op, torch.device("cpu"), torch.float32),
            "cpu_bf16": _auto(op, torch.device("cpu"), torch.bfloat16),
            "cuda": _auto(op, torch.device("cuda"), torch.float32) if torch.cuda.is_available() else "n/a (no CUDA)",
        }
    return table
