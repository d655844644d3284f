"""Output allocation for the fused backends, with optional poisoning for tests.

Kernels allocate every output and saved buffer through ``empty``. Inside ``poisoned()`` (tests only),
floating buffers are filled with NaN and integer buffers with their maximum value first, so an element a
kernel forgets to write shows up as a wrong result instead of passing by luck.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

_poison = {"on": False}


def empty(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if _poison["on"]:
        out.fill_(float("nan") if dtype.is_floating_point else torch.iinfo(dtype).max)
    return out


@contextlib.contextmanager
def poisoned() -> Iterator[None]:
    """Within the block, ``empty`` returns poisoned buffers (NaN / max int) instead of garbage."""
    previous, _poison["on"] = _poison["on"], True
    try:
        yield
    finally:
        _poison["on"] = previous
