"""Output allocation for the fused backends: reuse of large CPU buffers, and poisoning for tests.

Kernels allocate every output and saved buffer through ``empty``. Two things happen there:

* **Reuse** (CPU only): a fresh tensor of a few MiB or more costs the C++ kernels more than their own pass
  over it, because glibc hands memory that large out as new pages (``mmap``) and every 4 KiB page then
  faults on its first write (measured here: filling a new 32 MiB tensor takes 10 ms, 0.3 ms when glibc
  reuses memory instead). A training loop asks for the same shapes every step, and by the next step the
  previous step's buffers are garbage. So ``empty(..., like=x)`` keeps the storages of large outputs and
  hands one out again once nothing references it any more (its storage's use count is back to the pool's
  own reference); anything still in use (saved for a backward, kept by the caller) is never handed out
  twice. Each hand-out is a new tensor over the storage, with its own autograd metadata and version
  counter. The pool keeps at most ``FITNETS_FAST_BUFFER_POOL_MB`` MiB (default 2048; 0 turns reuse off)
  and drops the least recently used idle storages beyond that. Reuse applies only where ``like`` is a
  plain CPU ``torch.Tensor`` (so fake tensors under ``torch.compile`` tracing and tensor subclasses get
  ordinary allocations).
* **Poisoning**: inside ``poisoned()`` (tests only), floating buffers are filled with NaN and integer
  buffers with their maximum value first, so an element a kernel forgets to write shows up as a wrong
  result instead of passing by luck (reused buffers are poisoned too).
"""
from __future__ import annotations

import collections
import contextlib
import math
import os
import threading
from typing import Iterator, Optional, Sequence

import torch

_poison = {"on": False}

# Smallest output (bytes) worth keeping: below ~1 MiB, malloc reuses memory without page faults anyway.
_MIN_POOLED_BYTES = 1 << 20


class _StoragePool:
    """CPU storages handed out by ``empty``, idle or busy, least recently used first."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self.storages: "collections.OrderedDict[int, torch.UntypedStorage]" = collections.OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def _idle(storage: torch.UntypedStorage) -> bool:
        return torch._C._storage_Use_Count(storage._cdata) == 1  # only the pool's own reference

    def take(self, nbytes: int) -> torch.UntypedStorage:
        """An idle storage of exactly ``nbytes`` (marked most recently used), or a new one if none is idle."""
        with self.lock:
            for key, storage in self.storages.items():
                if storage.nbytes() == nbytes and self._idle(storage):
                    self.storages.move_to_end(key)
                    return storage
            storage = torch.UntypedStorage(nbytes)
            self._evict_idle(self.limit_bytes - nbytes)
            if self.bytes + nbytes <= self.limit_bytes:
                self.storages[id(storage)] = storage
                self.bytes += nbytes
            return storage

    def _evict_idle(self, target_bytes: int) -> None:
        """Drop idle storages, least recently used first, until the pool holds at most ``target_bytes``."""
        for key in [k for k, s in self.storages.items() if self._idle(s)]:
            if self.bytes <= target_bytes:
                return
            self.bytes -= self.storages.pop(key).nbytes()


def _pool_limit_bytes() -> int:
    """``FITNETS_FAST_BUFFER_POOL_MB`` in bytes: a whole non-negative number of MiB (default 2048); anything
    else (``1.5``, ``abc``, ``-1``) is a ValueError, raised when ``fitnets_fast`` is imported."""
    megabytes = os.environ.get("FITNETS_FAST_BUFFER_POOL_MB", "2048").strip()
    if not megabytes.isascii() or not megabytes.isdigit():
        raise ValueError(f"FITNETS_FAST_BUFFER_POOL_MB must be a whole non-negative number of MiB such as 2048 "
                         f"(0 turns buffer reuse off), got {megabytes!r}")
    return int(megabytes) << 20


# Reuse needs PyTorch's storage use count (a private binding): without it, every output is a new tensor.
_pool = _StoragePool(_pool_limit_bytes() if hasattr(torch._C, "_storage_Use_Count") else 0)


def empty(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device,
          like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """An uninitialised contiguous ``shape`` tensor; a reused storage when ``like`` allows it (see above)."""
    shape = tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    reusable = (like is not None and type(like) is torch.Tensor and like.device.type == "cpu"
                and torch.device(device).type == "cpu" and nbytes >= _MIN_POOLED_BYTES and _pool.limit_bytes > 0)
    if reusable:
        out = torch.empty(0, dtype=dtype).set_(_pool.take(nbytes), 0, shape)
    else:
        out = torch.empty(shape, dtype=dtype, device=device)
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
