"""Where the training loop's batches come from, teacher outputs (cached when they cannot change), evaluation.

A split is either resident tensors (``TensorSplit``: images ``(N, C, H, W)`` and labels ``(N,)`` kept on the
device; training batches from ``fitnets_fast.data.Batches``, so epoch ``e``'s order and augmentation depend
only on ``(seed, e)``) or any iterable of ``(images, labels)`` batches (``LoaderSplit``, e.g. a
``torch.utils.data.DataLoader``; each batch is moved to the device as it comes; a sampler or batch sampler
with ``set_epoch`` is told the 1-based epoch before each training epoch, as ``DistributedSampler`` expects).

Under several processes every process sees every batch and trains on its shard (``World.shard``);
evaluation splits a tensor split's rows between the processes and a loader's batches round-robin, and the
sums are all-reduced.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import features
from .distributed import World

__all__ = ["TensorSplit", "LoaderSplit", "as_split", "EpochBatchSampler", "TeacherOutputs", "accuracy_and_loss", "mean_hint_loss"]

Batch = Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


class TensorSplit:
    """Resident ``(x, y)`` on the device. ``epoch(e)`` yields ``(xb, yb, ids)`` training batches (``ids``:
    the rows taken, so that cached teacher outputs can be indexed); ``chunks(batch, world)`` yields this
    process's evaluation slices ``(xb, yb, rows)`` in order."""

    cacheable = True

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape[:1] != y.shape[:1]:
            raise ValueError("a tensor split is a pair (images, labels) of tensors with the same first dim")
        self.x, self.y = x, y
        self.batches = None

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def make_batches(self, batch_size: int, seed: int, augment: Optional[Callable]) -> None:
        from . import data as _data

        self.batches = _data.Batches(self.x, torch.arange(self.x.shape[0], device=self.x.device), batch_size,
                                     seed=seed, shuffle=True, augment=augment, drop_last=True)

    def num_batches(self) -> Optional[int]:
        return len(self.batches)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        for xb, ids in self.batches.epoch(epoch):
            yield xb, self.y[ids], ids

    def chunks(self, batch: int, world: World) -> Iterator[Batch]:
        rows = world.rows(self.x.shape[0])
        x, y = self.x[rows], self.y[rows]
        start = rows.start
        for i in range(0, x.shape[0], batch):
            yield x[i:i + batch], y[i:i + batch], torch.arange(start + i, start + min(i + batch, x.shape[0]))


class LoaderSplit:
    """Any iterable of ``(images, labels)`` batches (a DataLoader); batches go to ``device`` as they come."""

    cacheable = False

    def __init__(self, loader: Iterable, device: torch.device, memory_format=torch.contiguous_format):
        self.loader, self.device, self.memory_format = loader, device, memory_format

    def __len__(self) -> int:
        dataset = getattr(self.loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__"):
            return len(dataset)
        return sum(b[0].shape[0] for b in self.loader)

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self._first()[0].shape[1:])

    def make_batches(self, batch_size: int, seed: int, augment: Optional[Callable]) -> None:
        if augment is not None:
            raise ValueError("augment applies to tensor data; augment a DataLoader's data in its dataset")

    def num_batches(self) -> Optional[int]:
        try:
            return len(self.loader)
        except TypeError:
            return None

    def _first(self):
        for batch in self.loader:
            return self._check(batch)
        raise ValueError("the data loader yields no batch")

    def _check(self, batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"a data loader must yield (images, labels) pairs, got {type(batch).__name__}")
        xb, yb = batch
        return (xb.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                yb.to(self.device, non_blocking=True))

    def epoch(self, epoch: int) -> Iterator[Batch]:
        for owner in (getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(epoch)
        for batch in self.loader:
            xb, yb = self._check(batch)
            yield xb, yb, None

    def chunks(self, batch: int, world: World) -> Iterator[Batch]:
        for i, b in enumerate(self.loader):
            if i % world.size == world.rank:
                xb, yb = self._check(b)
                yield xb, yb, None


Split = Union[TensorSplit, LoaderSplit]


class EpochBatchSampler:
    """A DataLoader ``batch_sampler`` giving the batches of tensor data: epoch ``e``'s index batches are
    those of ``fitnets_fast.data.Batches(..., seed=seed, shuffle=True, drop_last=True).epoch(e)`` over ``n``
    examples, so a DataLoader over the same examples trains exactly as the tensors do. The training loop
    calls ``set_epoch(e)`` before each epoch."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        if n < batch_size or batch_size < 1:
            raise ValueError(f"need 1 <= batch_size <= n, got batch_size {batch_size}, n {n}")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[List[int]]:
        from .data.seeding import derive_seed

        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(derive_seed("order", self.seed,
                                                                                            self.epoch)))
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size].tolist()


def as_split(data: Any, device: torch.device, name: str, memory_format=torch.contiguous_format) -> Split:
    """``data`` as a split: a pair of tensors (moved to ``device``) or an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{name} must be (images (N, ...), labels (N,)), got shapes {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        return TensorSplit(x.to(device).contiguous(memory_format=memory_format), y.to(device).long())
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(f"{name} must be a pair of tensors (images, labels) or an iterable of (images, labels) "
                        f"batches such as a DataLoader, got {type(data).__name__}")
    return LoaderSplit(data, device, memory_format)


class TeacherOutputs:
    """The frozen teacher's logits (``path=None``) or the output of the module at ``path``, without
    gradients. For a tensor split, when ``cache`` allows it (and, for "train", there is no augmentation),
    each is computed once over the whole split in batches of ``batch`` and indexed by ``ids``."""

    def __init__(self, teacher: nn.Module, splits: Dict[str, Optional[Split]], batch: int, cache: bool,
                 train_augmented: bool):
        self.teacher, self.splits, self.batch = teacher, splits, batch
        self.cache, self.train_augmented = cache, train_augmented
        self._cache: Dict[Tuple[str, Optional[str]], torch.Tensor] = {}

    @torch.no_grad()
    def compute(self, path: Optional[str], xb: torch.Tensor) -> torch.Tensor:
        return self.teacher(xb) if path is None else features.forward_to(self.teacher, path, xb)

    def get(self, split: str, path: Optional[str], xb: torch.Tensor, ids: Optional[torch.Tensor]) -> torch.Tensor:
        source = self.splits[split]
        cacheable = (self.cache and ids is not None and source is not None and source.cacheable
                     and (split != "train" or not self.train_augmented))
        if not cacheable:
            return self.compute(path, xb)
        key = (split, path)
        if key not in self._cache:
            x = source.x
            self._cache[key] = torch.cat([self.compute(path, x[i:i + self.batch])
                                          for i in range(0, x.shape[0], self.batch)])
        return self._cache[key][ids.to(self._cache[key].device)]


@torch.no_grad()
def accuracy_and_loss(model: nn.Module, split: Split, batch: int, world: World = World()) -> Tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` in eval mode over ``split``; each process evaluates
    its share and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    n = torch.zeros((), device=device)
    for xb, yb, _ in split.chunks(batch, world):
        logits = model(xb)
        loss += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
        n += yb.shape[0]
    model.train(was_training)
    correct, loss, n = world.sum([correct, loss, n]).tolist()
    n = max(n, 1)
    return correct / n, loss / n


@torch.no_grad()
def mean_hint_loss(student: nn.Module, guided: str, regressor: nn.Module, hint: str, outputs: TeacherOutputs,
                   split_name: str, batch: int, world: World = World()) -> float:
    """The hint loss per example of ``regressor(student's map at guided, teacher's map at hint)`` over the
    split ``split_name`` of ``outputs``, the student in eval mode (the regressor's mode unchanged)."""
    split = outputs.splits[split_name]
    student.eval()
    total, n = 0.0, 0
    for xb, _, ids in split.chunks(batch, world):
        target = outputs.get(split_name, hint, xb, ids)
        total += regressor(features.forward_to(student, guided, xb), target).item() * xb.shape[0]
        n += xb.shape[0]
    student.train()
    device = next(student.parameters()).device
    total, n = world.sum([torch.tensor(total, device=device), torch.tensor(float(n), device=device)]).tolist()
    return total / max(n, 1)
