"""The one training loop: ``Loop.fit(method, train, state)`` runs a method's epochs.

It owns everything a method does not: autocast (``amp``), the fp16 grad scaler, the max-norm projection after
every step, DistributedDataParallel around the method's trained modules, the per-epoch schedules and
evaluation, early stopping (``patience`` epochs without a strict improvement of the monitored validation
value, at most ``max_epochs``), the best-validation weights, progress bars, the per-epoch record, and a
checkpoint after every epoch (through the ``save`` hook its owner gives). ``FitState`` is the resumable
state of one ``fit``.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
import zlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from .progress import progress_bar

from .config import Config
from .distributed import World
from .methods import Method

__all__ = ["FitState", "Loop", "TrainingDiverged", "derive_seed"]


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from ``parts`` (stable across runs and processes)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def cpu_copy(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@dataclass
class FitState:
    """Where one ``fit`` stands after ``epoch`` epochs: optimizer ``updates`` so far, the best monitored
    value and its epoch, epochs since the last improvement, the best weights of each trained module (by
    checkpoint name, on CPU) and one short record per epoch (epoch, test/valid accuracy, valid loss)."""

    epoch: int = 0
    updates: int = 0
    best_value: Optional[float] = None
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: Optional[Dict[str, Dict[str, torch.Tensor]]] = None
    records: List[Dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "FitState":
        return cls(**data)


class _TrainStep(nn.Module):
    """A method's trained modules as one module whose ``forward(xb, yb, ids)`` is the method's loss: the unit
    DistributedDataParallel wraps (it averages the gradients of exactly these parameters)."""

    def __init__(self, method: Method):
        super().__init__()
        self.trained = nn.ModuleList(method.trained)
        self.loss_fn = method.loss

    def forward(self, xb, yb, ids):
        return self.loss_fn(xb, yb, ids)


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16, AMX); without it, PyTorch's
    CPU bfloat16 convolutions fall back to a slow generic implementation."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Loop:
    """Runs methods with the run's settings (``cfg``: amp, channels_last, log_every, seed), on ``device``,
    as this process of ``world``; ``quiet`` hides progress bars (always hidden off rank 0)."""

    def __init__(self, cfg: Config, device: torch.device, world: World = World(), quiet: bool = False):
        self.cfg, self.device, self.world = cfg, device, world
        self.quiet = quiet or not world.is_main
        self.autocast = (partial(torch.autocast, device.type,
                                 dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)
                         if cfg.amp != "none" else nullcontext)
        if cfg.amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn("amp='bf16' on a CPU without native bfloat16 (AVX512-BF16 or AMX): PyTorch's bfloat16 "
                          "convolutions take a slow fallback here (over 10x slower than float32 on the MNIST "
                          "FitNet); set amp='none'", RuntimeWarning, stacklevel=2)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def fit(self, method: Method, train, state: Optional[FitState] = None, *,
            save: Callable[[FitState, bool, Dict[str, Any]], None] = lambda state, improved, record: None
            ) -> FitState:
        """Train ``method`` on ``train`` (a ``feed`` split) from ``state`` (None: a fresh start, seeding the
        RNG from the run seed, row and stage) until it stops; then load the best-validation weights into its
        modules and return the final state. After every epoch ``save(state, improved, record)`` runs."""
        cfg, row, stage = self.cfg, method.row, method.stage
        if state is None:
            torch.manual_seed(derive_seed(cfg.seed, row, stage, "train"))   # dropout etc.: independent of earlier tasks
            state = FitState()
        step = self.world.wrap(_TrainStep(method), self.device)
        bar = progress_bar(total=method.max_epochs, initial=state.epoch, desc=f"{row}/{stage}", disable=self.quiet)
        try:
            while state.epoch < method.max_epochs and not (method.patience is not None
                                                           and state.bad_epochs >= method.patience):
                state.epoch += 1
                t0 = time.perf_counter()
                sched = method.schedule(state.epoch, state.updates)
                train_loss, train_acc = self._epoch(method, step, train, state)
                ev = method.evaluate()
                monitor = ev.pop("monitor")
                improved = monitor is None or state.best_value is None or monitor < state.best_value
                if improved:
                    state.best_value, state.best_epoch, state.bad_epochs = monitor, state.epoch, 0
                    state.best_state = {name: cpu_copy(m) for name, m in method.modules.items()}
                else:
                    state.bad_epochs += 1
                seconds = time.perf_counter() - t0
                record = {"row": row, "stage": stage, "epoch": state.epoch, **sched, "train_loss": train_loss,
                          "train_acc": train_acc, **ev, "best": improved, "seconds": round(seconds, 4)}
                state.records.append({k: record[k] for k in ("epoch", "test_acc", "valid_acc", "valid_loss")})
                save(state, improved, record)
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in ev.items() if v is not None})
        finally:
            bar.close()
            method.close()
            del step   # frees the DDP wrapper and its gradient hooks before a later stage wraps these modules
        for name, module in method.modules.items():
            module.load_state_dict(state.best_state[name])
        return state

    def _epoch(self, method: Method, step: nn.Module, train, state: FitState) -> Tuple[float, Optional[float]]:
        """One epoch over ``train``'s batches; returns ``(mean loss, accuracy or None)``."""
        cfg, opt, world = self.cfg, method.optimizer, self.world
        for m in method.trained:
            m.train()
        method.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen, has_logits = 0, False   # rows of the global batches so far (each process trains on its shard)
        if world.distributed:   # dropout masks: independent per process, reproducible per (stage, epoch)
            torch.manual_seed(derive_seed(cfg.seed, method.row, method.stage, state.epoch, "rank", world.rank))
        total = train.num_batches()
        bar = progress_bar(total=total, desc=f"  epoch {state.epoch}", leave=False, disable=self.quiet)
        b = -1
        for b, (xb, yb, ids) in enumerate(world.shard(train.epoch(state.epoch))):
            method.before_step(state.updates)
            with self.autocast():
                logits, losses = step(xb.contiguous(memory_format=self.memory_format), yb, ids)
            loss = losses["loss"]
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
            method.max_norm.apply()
            state.updates += 1
            seen += xb.shape[0] * world.size
            loss_sum += loss.detach().float() * xb.shape[0]
            if logits is not None:
                has_logits = True
                correct += (logits.detach().argmax(1) == yb).sum()
            if (b + 1) % cfg.log_every == 0 or b + 1 == total:
                total_loss, total_correct = world.sum([loss_sum, correct]).tolist()
                _check_finite(total_loss / seen, method, state.epoch, b)
                bar.set_postfix(loss=f"{total_loss / seen:.4g}",
                                acc=f"{total_correct / seen:.3f}" if logits is not None else "-")
            bar.update(1)
        bar.close()
        if seen == 0:
            raise ValueError(f"{method.row}/{method.stage}: the training data gave no batch in epoch {state.epoch}")
        total_loss, total_correct = world.sum([loss_sum, correct]).tolist()
        mean = total_loss / seen
        _check_finite(mean, method, state.epoch, b)
        return mean, (total_correct / seen if has_logits else None)


def _check_finite(value: float, method: Method, epoch: int, batch: int) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(f"{method.row}/{method.stage}: the training loss is {value} at epoch {epoch} "
                               f"(by batch {batch}); lower the learning rate or check the data. The last "
                               f"checkpoint (previous epoch) is intact.")
