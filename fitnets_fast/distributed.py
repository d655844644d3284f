"""Data-parallel training over processes launched by ``torchrun``, with PyTorch's DistributedDataParallel.

``torchrun --nproc_per_node N -m fitnets_fast train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`launch` reads them and opens the process
group (gloo for a CPU run, nccl for CUDA, one GPU per process: ``cuda:LOCAL_RANK``) with a timeout; without
them (or with ``WORLD_SIZE=1``) it returns the single-process :class:`World` and every helper below is the
identity / a no-op, so one code path serves both.

The data-parallel contract: every process holds the whole resident data set and draws the same global batch
order (it depends only on the seed and the epoch); each global batch of ``B`` rows is cut into ``WORLD_SIZE``
contiguous shards of ``B / WORLD_SIZE`` rows (:meth:`World.shard`), each process computes the mean loss of its
shard, and DDP averages the gradients, so every step equals one single-process step on the global batch (up
to floating-point summation order). Metric sums are all-reduced (:meth:`World.sum`); only rank 0 writes files
and shows progress bars (:attr:`World.is_main`).

A process that dies or hangs makes the others fail in their next collective (at once for a closed connection,
after ``timeout_s`` for a silent peer); :meth:`World.guard` turns that failure into :class:`DistributedFailure`
with a message naming the rank, so the command exits non-zero instead of hanging. (With nccl, PyTorch's
watchdog may instead end the process itself after the timeout, with its own message.) torchrun also stops the
other processes when one exits with an error.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["World", "DistributedFailure", "launch", "is_main_process", "LAUNCH_VARIABLES"]

#: The environment variables torchrun sets that :func:`launch` reads.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

# Texts of the errors the gloo / nccl / c10d layers raise as plain RuntimeErrors when a peer is lost.
_COMM_ERROR_MARKERS = ("gloo", "nccl", "c10d", "Connection reset", "Connection closed", "Timed out")


class DistributedFailure(RuntimeError):
    """A collective operation failed: another process of the run died, hung past the timeout, or the
    launch is misconfigured. The message names this process's rank."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` in ``[0, size)``, ``size`` processes in all, ``local_rank``
    on this machine (its GPU index), and ``timeout_s`` of every collective. ``World()`` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = 1800.0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and shows progress bars."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device this process trains on: ``cuda:LOCAL_RANK`` for a CUDA run of several processes,
        else ``device``. Raises ``ValueError`` for an explicit ``cuda:N`` under a multi-process launch."""
        if not self.distributed or device.type != "cuda":
            return device
        if device.index is not None:
            raise ValueError(f"device must be 'cuda' (or 'auto') under torchrun, got {str(device)!r}: each "
                             f"process uses cuda:LOCAL_RANK")
        return torch.device("cuda", self.local_rank)

    def local_batch_size(self, batch_size: int) -> int:
        """Rows of each global batch of ``batch_size`` that this process trains on: ``batch_size / size``.
        Raises ``ValueError`` when ``size`` does not divide ``batch_size``."""
        if batch_size % self.size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the number of processes {self.size} "
                             f"(torchrun --nproc_per_node): each process trains on batch_size / processes rows "
                             f"of every batch; pick a batch size that is a multiple of {self.size}")
        return batch_size // self.size

    def shard(self, batches: Iterable[Tuple[torch.Tensor, ...]]) -> Iterator[Tuple[torch.Tensor, ...]]:
        """This process's shard of every global batch: each tensor of each yielded tuple (rows along dim 0,
        ``B`` rows, ``size`` dividing ``B``) cut to rows ``[rank * B/size, (rank + 1) * B/size)``; ``None``
        entries (a batch without row ids, as a DataLoader gives) pass through."""
        for batch in batches:
            b = self.local_batch_size(batch[0].shape[0])
            yield tuple(None if t is None else t[self.rank * b:(self.rank + 1) * b] for t in batch)

    def rows(self, n: int) -> slice:
        """This process's contiguous share of ``n`` rows (for evaluation): shares differ by at most one row
        and together cover ``range(n)`` in order."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """The element-wise sum over all processes of ``values`` (scalars on one device), as one 1-D
        tensor of ``len(values)`` float64 entries (one all-reduce); ``torch.stack(values)`` for one process."""
        total = torch.stack([torch.as_tensor(v).to(torch.float64) for v in values])
        if self.distributed:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def barrier(self) -> None:
        """Wait until every process gets here (no-op for one process)."""
        if self.distributed:
            dist.barrier()

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in DistributedDataParallel (its gradients averaged over the processes during
        ``backward``; rank 0's parameters and buffers broadcast once here); ``module`` itself for one
        process. Every parameter of ``module`` that requires a gradient must get one in each step."""
        if not self.distributed:
            return module
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Re-raise a lost-peer error of a collective inside the block as :class:`DistributedFailure` naming
        this rank (other exceptions pass through unchanged)."""
        try:
            yield
        except RuntimeError as exc:
            if not self.distributed or isinstance(exc, DistributedFailure) or not _is_comm_error(exc):
                raise
            raise DistributedFailure(
                f"rank {self.rank} of {self.size}: lost contact with another process (it exited, crashed or hung "
                f"for more than dist_timeout={self.timeout_s:g} s); stopping. Check that process's output. "
                f"Cause: {type(exc).__name__}: {exc}") from exc


def _is_comm_error(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return any(m.lower() in text.lower() for m in _COMM_ERROR_MARKERS)


def is_main_process() -> bool:
    """True unless torchrun started this process with ``RANK`` > 0 (for output outside a run)."""
    return os.environ.get("RANK", "0") == "0"


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _world_from_env(timeout_s: float) -> World:
    if "WORLD_SIZE" not in os.environ:
        return World(timeout_s=timeout_s)
    missing = [v for v in LAUNCH_VARIABLES if v not in os.environ]
    size = _env_int("WORLD_SIZE")
    if size == 1:
        return World(timeout_s=timeout_s)
    if missing:
        raise ValueError(f"WORLD_SIZE={size} is set but {', '.join(missing)} is not: launch with torchrun "
                         f"(torchrun --nproc_per_node {size} -m fitnets_fast train ...)")
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(f"inconsistent launch: RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local}")
    return World(rank, size, local, timeout_s)


@contextlib.contextmanager
def launch(device: torch.device, timeout_s: float = 1800.0) -> Iterator[World]:
    """The :class:`World` of this process, with the process group open inside the block.

    ``device`` is the run's device (its type picks the backend: nccl for CUDA, gloo otherwise; a CUDA
    process is bound to ``cuda:LOCAL_RANK``). ``timeout_s`` bounds the wait for the other processes at
    start-up and in every collective. Without torchrun's variables (or ``WORLD_SIZE=1``) this is a single
    process and nothing is opened. The group is closed when the block ends, also by an exception.
    Raises ``ValueError`` for a bad ``timeout_s`` or an inconsistent launch.
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
    world = _world_from_env(float(timeout_s))
    if not world.distributed:
        yield world
        return
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already open in this process")
    if device.type == "cuda":
        torch.cuda.set_device(world.device(device))
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank,
                                world_size=world.size, timeout=datetime.timedelta(seconds=world.timeout_s))
    except RuntimeError as exc:
        raise DistributedFailure(
            f"rank {world.rank} of {world.size}: the other processes did not all join at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within dist_timeout={world.timeout_s:g} s "
            f"(start every process, e.g. with torchrun --nproc_per_node {world.size}). "
            f"Cause: {type(exc).__name__}: {exc}") from exc
    try:
        yield world
    finally:
        dist.destroy_process_group()
