"""The input pipeline: shuffled full batches sliced from one resident tensor, and pylearn2's WindowAndFlip
augmentation done on whole batches on the tensor's device (no PIL, no worker processes)."""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from .seeding import derive_seed


def window_and_flip(x: torch.Tensor, pad: int = 8, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """pylearn2 ``WindowAndFlip(pad_randomized=pad, window_shape=(H, W))`` on a whole batch.

    ``x`` (N, C, H, W): each image is zero-padded by ``pad`` pixels on every side, an H x W window is cut at a
    uniformly random offset (0 .. 2*pad in each axis, so every window lies inside the padded image), and the
    window is mirrored left-right with probability 0.5. Offsets and flips are drawn per image from
    ``generator`` (on its device; None: the default generator of ``x``'s device) and the result is built with
    one gather on ``x``'s device. Returns a new tensor of ``x``'s shape, dtype and device.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise TypeError(f"x must be a tensor (N, C, H, W), got "
                        f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    n, c, h, w = x.shape
    draw_device = generator.device if generator is not None else x.device
    offsets = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator, device=draw_device).to(x.device)
    flips = torch.randint(0, 2, (n, 1), generator=generator, device=draw_device).to(x.device, torch.bool)
    rows = offsets[0] + torch.arange(h, device=x.device)  # (N, H) rows of the padded image
    cols = offsets[1] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flips, cols.flip(1), cols)
    hp, wp = h + 2 * pad, w + 2 * pad
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    return padded.reshape(n, c, hp * wp).gather(2, index).view(n, c, h, w)


class Batches:
    """Mini-batches of resident tensors, reproducible per epoch.

    ``x`` (N, ...) and ``y`` (N, ...) on one device. ``epoch(e)`` yields (xb, yb) slices of ``batch_size`` rows
    (the last partial batch is dropped unless ``drop_last=False``). With ``shuffle`` the order is a random
    permutation drawn from a CPU generator seeded from (``seed``, e); ``augment`` (e.g. :func:`window_and_flip`)
    is called as ``augment(xb, generator=g)`` with a generator on ``x``'s device seeded from (``seed``, e).
    Epoch e's batches therefore depend only on (seed, e) (and, for the augmentation draws, on the device
    type): a resumed run reproduces them without any saved RNG state.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 augment: Optional[Callable[..., torch.Tensor]] = None, drop_last: bool = True):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() < 1 or y.dim() < 1:
            raise TypeError("x and y must be tensors with the examples along dim 0")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must hold the same number of examples, got {x.shape[0]} and {y.shape[0]}")
        if x.device != y.device:
            raise ValueError(f"x and y must be on one device, got {x.device} and {y.device}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if drop_last and batch_size > x.shape[0]:
            raise ValueError(f"batch_size {batch_size} exceeds the {x.shape[0]} examples: with drop_last=True an "
                             f"epoch would have no batch")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be None or a callable(x, generator=...), got {type(augment).__name__}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.seed, self.shuffle, self.augment, self.drop_last = seed, shuffle, augment, drop_last

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generators(self, epoch: int) -> Tuple[torch.Generator, torch.Generator]:
        """(order generator on CPU, augmentation generator on x's device) for ``epoch``."""
        order = torch.Generator().manual_seed(derive_seed("order", self.seed, epoch))
        aug = torch.Generator(device=self.x.device).manual_seed(derive_seed("augment", self.seed, epoch))
        return order, aug

    def epoch(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """An iterator over epoch ``epoch``'s batches (xb, yb); see the class doc for what they depend on."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        return self._iterate(epoch)

    def _iterate(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order_gen, aug_gen = self._generators(epoch)
        n, b = self.x.shape[0], self.batch_size
        order = torch.randperm(n, generator=order_gen).to(self.x.device) if self.shuffle else None
        for i in range(len(self)):
            if order is None:
                xb, yb = self.x[i * b:(i + 1) * b], self.y[i * b:(i + 1) * b]
            else:
                rows = order[i * b:(i + 1) * b]
                xb, yb = self.x.index_select(0, rows), self.y.index_select(0, rows)
            if self.augment is not None:
                xb = self.augment(xb, generator=aug_gen)
            yield xb, yb
