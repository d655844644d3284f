"""Which implementation runs an op: the plain-PyTorch reference, the C++ CPU kernels or the Triton kernels.

A backend is a package (unavailable if it cannot be imported) exposing ``<op>_impl`` functions with the
signatures of ``fitnets_fast.reference`` and ``unsupported(op, inputs) -> Optional[str]``: None when its
``<op>_impl`` runs these positional inputs itself, else a one-line reason (a device, dtype or shape it does
not take). No impl hands a call on to another backend; dispatch decides, here:

* ``"reference"``: ``fitnets_fast.reference`` (always available; runs anything);
* ``"cpp"``: ``fitnets_fast.cpp`` (needs the compiled ``fitnets_fast._C``; CPU tensors, float32/float64, and
  bfloat16 for the maxout ops, which is what they get under ``torch.autocast("cpu")``; at most 256 pieces);
* ``"triton"``: ``fitnets_fast.kernels`` (needs triton; CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1``, which is how CI runs the kernels).

``"auto"`` picks triton for CUDA tensors and cpp for CPU tensors, and the reference wherever that backend
is unavailable or ``unsupported`` gives a reason. A backend asked for by name that cannot run the call is
a ValueError with the reason. ``use_backend(name)`` changes what ``"auto"`` means inside a ``with`` block.
Every eager dispatch records the backend it chose (``used()``, reported by ``fitnets_fast.info()``).
"""
from __future__ import annotations

import contextlib
import importlib
import os
from types import ModuleType
from typing import Dict, Iterator, List, Optional, Sequence

import torch

BACKENDS = ("reference", "cpp", "triton")
OPS = ("maxout", "maxout_conv2d", "maxout_linear", "hint_loss", "kd_loss")
_MODULES = {"reference": "fitnets_fast.reference", "cpp": "fitnets_fast.cpp", "triton": "fitnets_fast.kernels"}

# Read once at import: the Triton interpreter must be chosen before triton is imported anyway.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# A plain global (not a ContextVar) so that torch.compile traces the dispatch without a graph break.
_default = {"backend": "auto"}
_loaded: dict[str, Optional[ModuleType]] = {}
_load_errors: dict[str, str] = {}
_used: Dict[str, Dict[str, None]] = {op: {} for op in OPS}  # op -> backends that ran it (insertion-ordered)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, ops called with ``backend="auto"`` use ``name`` ("auto" restores the default)."""
    check_name(name)
    previous, _default["backend"] = _default["backend"], name
    try:
        yield
    finally:
        _default["backend"] = previous


def default() -> str:
    """What ``"auto"`` means now: "auto" (pick per call) or the backend ``use_backend`` set."""
    return _default["backend"]


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


def resolve(op: str, backend: str, inputs: Sequence) -> str:
    """The backend that runs ``op`` on ``inputs`` (the positional arguments of ``<op>_impl``, already
    checked) when the caller asked for ``backend``; ValueError if a backend named explicitly cannot."""
    check_name(backend)
    if backend == "auto":
        backend = _default["backend"]
    if backend == "auto":
        preferred = "triton" if inputs[0].device.type == "cuda" else "cpp"
        return "reference" if _cannot_run(preferred, op, inputs) else preferred
    problem = _cannot_run(backend, op, inputs)
    if problem:
        raise ValueError(f"backend={backend!r} cannot run {op} here: {problem}")
    return backend


def impl(op: str, backend: str, inputs: Sequence):
    """The ``<op>_impl`` function that runs this call (recorded for ``used()`` outside ``torch.compile``)."""
    name = resolve(op, backend, inputs)
    if not torch.compiler.is_compiling():
        _used[op][name] = None
    return getattr(module(name), f"{op}_impl")


def used() -> Dict[str, List[str]]:
    """For each op, the backends that have run it in this process (eager calls), in first-use order."""
    return {op: list(names) for op, names in _used.items()}


def _cannot_run(backend: str, op: str, inputs: Sequence) -> Optional[str]:
    if module(backend) is None:
        return f"the {backend} backend is unavailable ({_load_errors.get(backend)})"
    if not implements(backend, op):
        return f"the {backend} backend does not implement {op}"
    return module(backend).unsupported(op, tuple(inputs))


def check_name(name: str) -> str:
    """Return ``name`` if it is "auto" or a known backend, else raise ValueError."""
    if name not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    return name


def example_inputs(op: str, device: torch.device, dtype: torch.dtype) -> tuple:
    """Small valid ``<op>_impl`` inputs of ``op`` on ``device``/``dtype`` (two pieces for the maxout ops):
    the typical call ``choices()`` asks each backend about."""
    def t(*shape):
        return torch.zeros(shape, device=device, dtype=dtype)

    return {
        "maxout": lambda: (t(1, 2, 1, 1), 2),
        "maxout_conv2d": lambda: (t(1, 1, 1, 1), t(2, 1, 1, 1), None, 2, 1, 0, None),
        "maxout_linear": lambda: (t(1, 1), t(2, 1), None, 2),
        "hint_loss": lambda: (t(1, 1, 1, 1), t(1, 1, 1, 1), t(2, 1, 1, 1), None, 2, 0, "maxout"),
        "kd_loss": lambda: (t(1, 2), t(1, 2), torch.zeros(1, dtype=torch.long, device=device), 3.0, 4.0, None,
                            1.0, "mean", -100),
    }[op]()


def choices() -> dict[str, dict[str, str]]:
    """For each op, the backend ``"auto"`` picks for a typical call (``example_inputs``) on float32 CPU
    tensors (``"cpu"``), float32 CUDA tensors, and the bfloat16 CPU tensors CPU autocast gives the maxout
    ops (``"cpu_bf16"``)."""
    cuda = torch.cuda.is_available()
    cases = {"cpu": (torch.device("cpu"), torch.float32), "cpu_bf16": (torch.device("cpu"), torch.bfloat16)}
    if cuda:
        cases["cuda"] = (torch.device("cuda"), torch.float32)
    table = {}
    for op in OPS:
        table[op] = {key: resolve(op, "auto", example_inputs(op, *case)) for key, case in cases.items()}
        if not cuda:
            table[op]["cuda"] = "n/a (no CUDA)"
    return table
