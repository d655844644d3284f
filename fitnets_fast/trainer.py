"""The FitNets trainer: a teacher, then each student row (backprop, KD, FitNets, one-stage FitNet), resumable.

``train(preset="digits", ...)`` runs a preset from ``fitnets_fast.config`` and returns the summary
(``summary.json``). The run is a list of *tasks*, one per (row, stage):

* ``teacher/teacher``: the teacher on cross-entropy with pylearn2 SGD + momentum and its lr / momentum
  schedules (or loaded from ``teacher_checkpoint``); frozen afterwards (eval mode, no gradients).
* ``backprop/ce``: the student alone on cross-entropy (RMSProp).
* ``kd/kd`` and ``fitnets/kd``: the whole student on ``CE + lambda * H(P_T^tau, P_S^tau_s)``, lambda from
  ``schedules.linear_decay`` at the 1-based epoch.
* ``fitnets/hints``: student layers ``0..g`` and the regressor on the hint loss (Eq. 3); the teacher runs only
  up to its hint layer and the student only up to its guided layer. The best epoch by validation hint loss
  is kept, the regressor is dropped, and ``fitnets/kd`` continues from that student.
* ``fitnet_onestage/onestage``: CE + beta * mean-MSE through a conv-BN-ReLU regressor (RepDistiller's FitNet).

Every student stage uses RMSProp with pylearn2's semantics, per-layer lr scales and max-norm after every
step (``fitnets_fast.optim``), early stopping after ``patience`` epochs without a strict improvement of the
monitored validation value (misclassification; hint loss in stage 1) and at most ``max_epochs``. Each row
reports the test accuracy of its best-validation epoch and of its last epoch; the kept weights are the
best-validation ones. All rows start from the same student initialisation (seeded by ``seed``), and the
batch order of epoch ``e`` depends only on ``(seed, e)``.

After every epoch the full state (weights, optimizer, RNG, lambda, stage, epoch, best-so-far, early-stopping
counter) is written atomically to ``checkpoints/last.pt``; ``train(resume=RUN_DIR)`` continues from it and
ends with exactly the metrics and weights of an uninterrupted run (same device, CPU deterministic).
Data stay on the device for the whole run; with ``cache_teacher`` and no augmentation the frozen teacher's
logits and hint maps are computed once per split.

Under ``torchrun --nproc_per_node N`` the trained modules of each stage run in DistributedDataParallel
(``fitnets_fast.distributed``): every process draws the same global batches and trains on its shard of each,
the frozen teacher runs on every process without gradients, training metrics are all-reduced, and only rank
0 writes files and shows progress bars. The saved state does not depend on N, so a run resumes with any
number of processes. ``amp`` (bf16 autocast, whose maxout layers the C++ kernels also run on CPU; or fp16
autocast with a grad scaler, for CUDA), ``channels_last`` and ``compile`` (``torch.compile`` of the student's
forward) are settings recorded in the run config.
"""
from __future__ import annotations

import math
import statistics
import time
import zlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import models as _models
from .config import Config, make_config
from .distributed import World, launch
from .nn import KDLoss
from .optim import MaxNorm, Momentum, RMSProp, param_groups
from .run_files import RunDir, format_table, load_model_file, save_model
from .schedules import exponential_decay, linear_decay, linear_ramp

__all__ = ["train", "default_out_dir", "evaluate_model_file", "TrainingDiverged", "resolve_device"]

_ROW_STAGES = {"backprop": ("ce",), "kd": ("kd",), "fitnets": ("hints", "kd"), "fitnet_onestage": ("onestage",)}


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


def resolve_device(device: Optional[str]) -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; otherwise ``torch.device(device)`` (CUDA checked)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def _cpu_copy(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


@torch.no_grad()
def _accuracy_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int,
                       world: World = World()) -> Tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` in eval mode over ``(x, y)``; each process of ``world``
    evaluates its share of the rows and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    n = max(x.shape[0], 1)
    rows = world.rows(x.shape[0])
    x, y = x[rows], y[rows]
    correct = torch.zeros((), device=x.device)
    loss = torch.zeros((), device=x.device)
    for i in range(0, x.shape[0], batch):
        logits = model(x[i:i + batch])
        yb = y[i:i + batch]
        loss += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    correct, loss = world.sum([correct, loss]).tolist()
    return correct / n, loss / n


@torch.no_grad()
def _time_forward(model: nn.Module, x: torch.Tensor, batch: int, repeats: int) -> float:
    """Median seconds of one forward pass over all of ``x`` in batches of ``batch`` (Table 5's measure:
    the batch divides ``len(x)``), after one warm-up pass."""
    model.eval()
    times = []
    for r in range(repeats + 1):
        _sync(x.device)
        t0 = time.perf_counter()
        for i in range(0, x.shape[0], batch):
            model(x[i:i + batch])
        _sync(x.device)
        if r:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


@dataclass
class _Stage:
    """What one task trains: ``model`` (the teacher or the student), ``modules`` (the trained modules by
    checkpoint name: "teacher", "student", "regressor"), the optimizer and max-norm projection over the
    trained layers, the stopping limits, and per-stage extras (the hint regressor, the guided-layer
    capture of the one-stage recipe, the KD loss whose ``lam`` the schedule sets). ``trained``: the modules
    whose parameters the optimizer updates; ``forward(xb, ids)``: the training loss ``(loss, logits or
    None)`` through them (DistributedDataParallel under torchrun), set by ``_Trainer._run_task``."""

    row: str
    stage: str
    model: nn.Module
    modules: Dict[str, nn.Module]
    optimizer: Optional[torch.optim.Optimizer]
    max_norm: MaxNorm
    max_epochs: int
    patience: Optional[int]
    regressor: Optional[nn.Module] = None
    capture: Optional["_GuidedCapture"] = None
    kd: Optional[KDLoss] = None
    trained: List[nn.Module] = field(default_factory=list)
    forward: Optional[Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, Optional[torch.Tensor]]]] = None


class _TrainStep(nn.Module):
    """A stage's trained modules as one module whose ``forward(xb, ids)`` is ``loss_fn(xb, ids)``: the unit
    DistributedDataParallel wraps (it averages the gradients of exactly these parameters)."""

    def __init__(self, trained: List[nn.Module], loss_fn: Callable):
        super().__init__()
        self.trained = nn.ModuleList(trained)
        self.loss_fn = loss_fn

    def forward(self, xb: torch.Tensor, ids: torch.Tensor):
        return self.loss_fn(xb, ids)


class _GuidedCapture:
    """Keeps the output of ``layer`` from the latest forward pass (for the one-stage recipe's regressor)."""

    def __init__(self, layer: nn.Module):
        self.value: Optional[torch.Tensor] = None
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.value = output

    def remove(self) -> None:
        self._handle.remove()


def _conv_regressor(hint_shape, guided_shape) -> nn.Module:
    """RepDistiller's ConvReg for equal or shrinking maps: conv ``k = N_g - N_h + 1`` + BatchNorm + ReLU."""
    k = guided_shape[1] - hint_shape[1] + 1
    if k < 1 or guided_shape[2] - hint_shape[2] + 1 != k:
        raise ValueError(f"fitnet_onestage needs a square guided map at least as large as the hint map; "
                         f"got guided {tuple(guided_shape)}, hint {tuple(hint_shape)}")
    return nn.Sequential(nn.Conv2d(guided_shape[0], hint_shape[0], k), nn.BatchNorm2d(hint_shape[0]), nn.ReLU())


class _Trainer:
    """One run: data on the device, the teacher, the task list and the state saved after each epoch."""

    def __init__(self, cfg: Config, run: RunDir, data_dir: Optional[str], quiet: bool,
                 callback: Optional[Callable[[Dict[str, Any]], None]], world: World):
        from . import data as _data

        self.cfg, self.run, self.callback, self.world = cfg, run, callback, world
        self.quiet = quiet or not world.is_main
        self.device = world.device(resolve_device(cfg.device))
        world.local_batch_size(cfg.batch_size)
        self.autocast = (partial(torch.autocast, self.device.type,
                                 dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)
                         if cfg.amp != "none" else nullcontext)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        prepared = _data.prepare(cfg.dataset, data_dir, validation=cfg.validation,
                                 preprocessing=cfg.preprocessing, device=self.device, **cfg.dataset_options)
        self.prepared = prepared
        self.x_train, self.y_train = prepared.train
        self.valid = prepared.valid
        self.x_test, self.y_test = prepared.test
        if cfg.channels_last:   # evaluation slices stay NHWC; training batches are converted as they are cut
            self.x_train, self.x_test = (x.contiguous(memory_format=self.memory_format)
                                         for x in (self.x_train, self.x_test))
            if self.valid is not None:
                self.valid = (self.valid[0].contiguous(memory_format=self.memory_format), self.valid[1])
        self.num_classes = len(prepared.classes)
        self.augment = None
        if cfg.augment == "window_and_flip":
            pad = cfg.augment_pad
            self.augment = lambda x, generator=None: _data.window_and_flip(x, pad=pad, generator=generator)
        self.batches = _data.Batches(self.x_train, torch.arange(self.x_train.shape[0], device=self.device),
                                     cfg.batch_size, seed=cfg.seed, shuffle=True, augment=self.augment,
                                     drop_last=True)
        self.tasks: List[Tuple[str, str]] = [("teacher", "teacher")] + [
            (row, stage) for row in cfg.students for stage in _ROW_STAGES[row]]
        self._cache: Dict[Tuple[str, int], torch.Tensor] = {}
        self.results: Dict[str, Any] = {}
        self.n_metrics = 0
        self.train_seconds = 0.0
        torch.manual_seed(_seed(cfg.seed, "teacher"))
        self.teacher = self._build(cfg.teacher, cfg.teacher_options)
        self.student: Optional[_models.MaxoutNet] = None
        self.hint_layer = self._layer_index(self.teacher, cfg.hint_layer, "hint_layer", "teacher")
        self.guided_layer = None

    # -- models ---------------------------------------------------------------------------------------
    def _build(self, name: str, options: Dict[str, Any]) -> _models.MaxoutNet:
        opts = {"backend": self.cfg.backend, **options}
        model = _models.build(name, self.num_classes, **opts).to(self.device, memory_format=self.memory_format)
        if tuple(model.input_shape) != tuple(self.x_train.shape[1:]):
            raise ValueError(f"model {name!r} expects inputs {tuple(model.input_shape)}, the data set "
                             f"{self.cfg.dataset!r} gives {tuple(self.x_train.shape[1:])}")
        return model

    @staticmethod
    def _layer_index(model, value: Optional[int], setting: str, role: str) -> int:
        default = model.hint_layer if setting == "hint_layer" else model.guided_layer
        index = default if value is None else value
        if index is None:
            raise ValueError(f"{setting} is not set and the {role} model has no default")
        if not 0 <= index < len(model.layers) - 1:
            raise ValueError(f"{setting} must be a hidden layer index in [0, {len(model.layers) - 1}), got {index}")
        return index

    def _new_student(self) -> None:
        torch.manual_seed(_seed(self.cfg.seed, "student"))
        self.student = self._build(self.cfg.student, self.cfg.student_options)
        self.guided_layer = self._layer_index(self.student, self.cfg.guided_layer, "guided_layer", "student")

    def _freeze_teacher(self) -> None:
        self.teacher.eval()
        self.teacher.requires_grad_(False)

    # -- teacher outputs ------------------------------------------------------------------------------
    def _teacher_out(self, split: str, index: int, x: torch.Tensor, ids: Optional[torch.Tensor]) -> torch.Tensor:
        """``teacher.forward_to(x, index)`` without gradients; cached per split when allowed."""
        cacheable = self.cfg.cache_teacher and (split != "train" or self.augment is None)
        if not cacheable:
            with torch.no_grad():
                return self.teacher.forward_to(x, index)
        key = (split, index)
        if key not in self._cache:
            full = {"train": self.x_train, "valid": self.valid[0] if self.valid else None, "test": self.x_test}[split]
            self._cache[key] = _batched(lambda xb: self.teacher.forward_to(xb, index), full,
                                        self.cfg.eval_batch_size)
        return self._cache[key] if ids is None else self._cache[key][ids]

    # -- one stage ------------------------------------------------------------------------------------
    def _stage(self, row: str, stage: str) -> _Stage:
        """The pieces of a stage: trained modules (by checkpoint name), optimizer, max-norm, loss, limits."""
        cfg = self.cfg
        if stage == "teacher":
            model = self.teacher
            return _Stage(row, stage, model, {"teacher": model},
                          Momentum(param_groups([(model, 1.0)]), lr=cfg.teacher_lr, momentum=cfg.teacher_momentum),
                          MaxNorm([model]), cfg.teacher_max_epochs, cfg.teacher_patience, trained=[model])
        student = self.student
        g = self.guided_layer
        s = _Stage(row, stage, student, {"student": student}, None, MaxNorm([student]), cfg.max_epochs, cfg.patience,
                   trained=[student])
        if stage == "hints":
            hint_layer = self.teacher.layers[self.hint_layer]
            reg = _models.build_regressor(self.teacher.layer_output_shape(self.hint_layer),
                                          student.layer_output_shape(g), hint_layer.pieces,
                                          untied_bias=getattr(hint_layer, "untied_bias", None) is not None,
                                          backend=cfg.backend).to(self.device, memory_format=self.memory_format)
            s.regressor = s.modules["regressor"] = reg
            s.trained = [student.layers[i] for i in range(g + 1)] + [reg]
            groups = param_groups([(m, 1.0) for m in s.trained])
            s.max_norm = MaxNorm(s.trained)
            s.max_epochs, s.patience = cfg.hint_max_epochs, cfg.hint_patience
        elif stage == "onestage":
            reg = _conv_regressor(self.teacher.layer_output_shape(self.hint_layer), student.layer_output_shape(g))
            if self.world.distributed and self.device.type == "cuda":   # BatchNorm statistics of the global batch
                reg = nn.SyncBatchNorm.convert_sync_batchnorm(reg)      # (CPU: of each process's shard)
            s.regressor = s.modules["regressor"] = reg = reg.to(self.device, memory_format=self.memory_format)
            s.trained.append(reg)
            s.capture = _GuidedCapture(student.layers[g])
            groups = param_groups([(student, 1.0), (reg, 1.0)])
        else:
            pre = cfg.pretrained_lr_scale if row == "fitnets" else 1.0
            groups = param_groups([(layer, pre if i <= g else 1.0) for i, layer in enumerate(student.layers)])
        if cfg.compile and stage in ("ce", "kd"):   # hints (forward_to) and onestage (a forward hook) run eagerly
            student.compile()
        if stage == "kd":
            s.kd = KDLoss(cfg.temperature, cfg.lambda_init, cfg.student_temperature,
                          soft_scale=cfg.temperature ** 2 if cfg.tau_squared else 1.0, backend=cfg.backend)
        s.optimizer = RMSProp(groups, lr=cfg.lr, decay=cfg.rms_decay, floor=cfg.rms_floor)
        return s

    def _set_schedules(self, s: _Stage, epoch: int, updates: int) -> Dict[str, float]:
        """Apply the epoch's schedules; returns the values recorded in the metrics."""
        cfg = self.cfg
        if s.stage == "teacher":
            if cfg.teacher_lr_schedule == "linear":
                lr = linear_decay(epoch, cfg.teacher_lr, cfg.teacher_lr * cfg.teacher_lr_decay_factor,
                                  cfg.teacher_lr_start, cfg.teacher_lr_saturate)
            elif cfg.teacher_lr_schedule == "exponential":
                lr = exponential_decay(updates, cfg.teacher_lr, cfg.teacher_lr_decay_factor, cfg.teacher_lr_min)
            else:
                lr = cfg.teacher_lr
            momentum = linear_ramp(epoch, cfg.teacher_momentum, cfg.teacher_momentum_final,
                                   cfg.teacher_momentum_start, cfg.teacher_momentum_saturate)
            s.optimizer.set_lr(lr)
            s.optimizer.set_momentum(momentum)
            return {"lr": lr, "momentum": momentum}
        out = {"lr": cfg.lr}
        if s.stage == "kd":
            lam = linear_decay(epoch, cfg.lambda_init, cfg.lambda_final, cfg.lambda_start, cfg.lambda_saturate)
            s.kd.lam = lam
            out["lambda"] = lam
        return out

    def _loss(self, s: _Stage, xb: torch.Tensor, ids: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(loss, logits or None)`` of one training batch."""
        stage, model = s.stage, s.model
        yb = self.y_train[ids]
        if stage == "hints":
            guided = model.forward_to(xb, self.guided_layer)
            return s.regressor(guided, self._teacher_out("train", self.hint_layer, xb, ids)), None
        logits = model(xb)
        if stage in ("teacher", "ce"):
            return F.cross_entropy(logits, yb), logits
        if stage == "kd":
            return s.kd(logits, self._teacher_out("train", -1, xb, ids), yb), logits
        hint = self._teacher_out("train", self.hint_layer, xb, ids)
        mse = F.mse_loss(s.regressor(s.capture.value), hint)
        return F.cross_entropy(logits, yb) + self.cfg.onestage_beta * mse, logits

    @torch.no_grad()
    def _valid_hint_loss(self, s: _Stage) -> float:
        x = self.valid[0]
        student, reg = s.model, s.regressor
        student.eval()
        total = 0.0
        rows = self.world.rows(x.shape[0])   # this process's share, the sums all-reduced
        hints = self._teacher_out("valid", self.hint_layer, x, None)[rows] if self.cfg.cache_teacher else None
        mine = x[rows]
        for i in range(0, mine.shape[0], self.cfg.eval_batch_size):
            xb = mine[i:i + self.cfg.eval_batch_size]
            hb = hints[i:i + xb.shape[0]] if hints is not None else self._teacher_out("valid", self.hint_layer, xb, None)
            total += reg(student.forward_to(xb, self.guided_layer), hb).item() * xb.shape[0]
        student.train()
        return self.world.sum([torch.tensor(total, device=self.device)]).item() / x.shape[0]

    def _train_epoch(self, s: _Stage, epoch: int, updates: int) -> Tuple[float, Optional[float], int]:
        """One epoch over the training batches; returns ``(mean loss, accuracy or None, updates)``."""
        cfg, opt, model = self.cfg, s.optimizer, s.model
        model.train()
        if s.regressor is not None:
            s.regressor.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0     # rows of the global batches so far (each process trains on its shard of every batch)
        exponential = s.stage == "teacher" and cfg.teacher_lr_schedule == "exponential"
        if self.world.distributed:   # dropout masks: independent per process, reproducible per (stage, epoch)
            torch.manual_seed(_seed(cfg.seed, s.row, s.stage, epoch, "rank", self.world.rank))
        bar = tqdm(total=len(self.batches), desc=f"  epoch {epoch}", leave=False, disable=self.quiet)
        for b, (xb, ids) in enumerate(self.world.shard(self.batches.epoch(epoch))):
            if exponential:
                opt.set_lr(exponential_decay(updates, cfg.teacher_lr, cfg.teacher_lr_decay_factor, cfg.teacher_lr_min))
            with self.autocast():
                loss, logits = s.forward(xb.contiguous(memory_format=self.memory_format), ids)
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
            s.max_norm.apply()
            updates += 1
            seen += xb.shape[0] * self.world.size
            loss_sum += loss.detach().float() * xb.shape[0]
            if logits is not None:
                correct += (logits.detach().argmax(1) == self.y_train[ids]).sum()
            if (b + 1) % cfg.log_every == 0 or b + 1 == len(self.batches):
                total_loss, total_correct = self.world.sum([loss_sum, correct]).tolist()
                self._check_finite(total_loss / seen, s, epoch, b)
                bar.set_postfix(loss=f"{total_loss / seen:.4g}",
                                acc=f"{total_correct / seen:.3f}" if logits is not None else "-")
            bar.update(1)
        bar.close()
        total_loss, total_correct = self.world.sum([loss_sum, correct]).tolist()
        mean = total_loss / max(seen, 1)
        self._check_finite(mean, s, epoch, len(self.batches) - 1)
        return mean, (total_correct / seen if s.stage != "hints" else None), updates

    @staticmethod
    def _check_finite(value: float, s: _Stage, epoch: int, batch: int) -> None:
        if not math.isfinite(value):
            raise TrainingDiverged(f"{s.row}/{s.stage}: the training loss is {value} at epoch {epoch} "
                                   f"(by batch {batch}); lower the learning rate or check the data. The last "
                                   f"checkpoint (previous epoch) is intact.")

    def _evaluate(self, s: _Stage) -> Dict[str, Optional[float]]:
        """Validation loss / accuracy, test accuracy and the monitored value (lower is better)."""
        out: Dict[str, Optional[float]] = {"valid_loss": None, "valid_acc": None, "test_acc": None, "monitor": None}
        bs = self.cfg.eval_batch_size
        if s.stage == "hints":
            if self.valid is not None:
                out["valid_loss"] = out["monitor"] = self._valid_hint_loss(s)
            return out
        model = s.model
        if self.valid is not None:
            out["valid_acc"], out["valid_loss"] = _accuracy_and_loss(model, *self.valid, bs, self.world)
            out["monitor"] = 1.0 - out["valid_acc"]
        out["test_acc"] = _accuracy_and_loss(model, self.x_test, self.y_test, bs, self.world)[0]
        return out

    # -- checkpoints ----------------------------------------------------------------------------------
    def _state(self, task: int, epoch: int, s: Optional[_Stage], progress: Dict[str, Any]) -> Dict[str, Any]:
        return {"task": task, "epoch": epoch,
                "teacher": self.teacher.state_dict(),
                "student": None if self.student is None else self.student.state_dict(),
                "regressor": None if s is None or s.regressor is None else s.regressor.state_dict(),
                "optimizer": None if s is None else s.optimizer.state_dict(),
                "progress": progress, "rng": _rng_state(), "results": self.results,
                "n_metrics": self.n_metrics, "train_seconds": self.train_seconds, "scaler": self.scaler.state_dict()}

    def _save(self, task: int, epoch: int, s, progress, improved: bool = False) -> None:
        if not self.world.is_main:
            return
        best = {"task": task, "epoch": progress["best_epoch"], "state": progress["best_state"]} if improved else None
        self.run.save_checkpoint(self._state(task, epoch, s, progress), best)

    # -- the run --------------------------------------------------------------------------------------
    def _run_task(self, task: int, ck: Optional[Dict[str, Any]]) -> None:
        cfg = self.cfg
        row, stage = self.tasks[task]
        if stage == "teacher" and cfg.teacher_checkpoint:
            self._load_teacher(cfg.teacher_checkpoint)
            self._finish_teacher_row()
            self._save(task + 1, 0, None, {})
            return
        if ck is None and row != "teacher" and stage == _ROW_STAGES[row][0]:
            self._new_student()
        s = self._stage(row, stage)
        if ck is not None:
            for name, module in s.modules.items():
                module.load_state_dict(ck[name])
            s.optimizer.load_state_dict(ck["optimizer"])
            progress, epoch = ck["progress"], ck["epoch"]
            _set_rng_state(ck["rng"])
        else:
            torch.manual_seed(_seed(cfg.seed, row, stage, "train"))   # dropout etc.: independent of earlier tasks
            progress = {"best_value": None, "best_epoch": 0, "bad_epochs": 0, "updates": 0, "best_state": None,
                        "records": []}
            epoch = 0
        s.forward = self.world.wrap(_TrainStep(s.trained, partial(self._loss, s)), self.device)
        records = progress["records"]
        bar = tqdm(total=s.max_epochs, initial=epoch, desc=f"{row}/{stage}", disable=self.quiet)
        try:
            while epoch < s.max_epochs and not (s.patience is not None and progress["bad_epochs"] >= s.patience):
                epoch += 1
                t0 = time.perf_counter()
                sched = self._set_schedules(s, epoch, progress["updates"])
                train_loss, train_acc, progress["updates"] = self._train_epoch(s, epoch, progress["updates"])
                ev = self._evaluate(s)
                monitor = ev.pop("monitor")
                improved = monitor is None or progress["best_value"] is None or monitor < progress["best_value"]
                if improved:
                    progress.update(best_value=monitor, best_epoch=epoch, bad_epochs=0,
                                    best_state={name: _cpu_copy(m) for name, m in s.modules.items()})
                else:
                    progress["bad_epochs"] += 1
                seconds = time.perf_counter() - t0
                self.train_seconds += seconds
                record = {"row": row, "stage": stage, "epoch": epoch, **sched, "train_loss": train_loss,
                          "train_acc": train_acc, **ev, "best": improved, "seconds": round(seconds, 4)}
                records.append({k: record[k] for k in ("epoch", "test_acc", "valid_acc", "valid_loss")})
                if self.world.is_main:
                    self.run.append_metrics(record)
                self.n_metrics += 1
                self._save(task, epoch, s, progress, improved)
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in ev.items() if v is not None})
                if self.callback is not None:
                    self.callback(dict(record))
        finally:
            bar.close()
            if s.capture is not None:
                s.capture.remove()
            s.forward = None   # frees the DDP wrapper and its gradient hooks before a later stage wraps these layers
        for name, module in s.modules.items():
            module.load_state_dict(progress["best_state"][name])
        self._finish_stage(s, epoch, progress)
        self._save(task + 1, 0, None, {})

    def _finish_stage(self, s: _Stage, epochs: int, progress: Dict[str, Any]) -> None:
        """Record the stage's result; the modules already hold their best-validation weights."""
        row, stage = s.row, s.stage
        recs = progress["records"]
        by_epoch = {r["epoch"]: r for r in recs}
        best = by_epoch[progress["best_epoch"]]
        stage_result = {"epochs": epochs, "best_epoch": progress["best_epoch"], "best_valid": progress["best_value"],
                        "test_acc_best": best["test_acc"], "test_acc_last": recs[-1]["test_acc"],
                        "valid_acc_best": best["valid_acc"]}
        if stage == "teacher":
            self._finish_teacher_row(stage_result)
            return
        entry = self.results.setdefault(row, {"row": row, "model": self.cfg.student, "stages": {}})
        entry["stages"][stage] = stage_result
        if stage == "hints":
            return
        entry.update({k: stage_result[k] for k in ("test_acc_best", "test_acc_last", "best_epoch", "epochs")})
        if self.world.is_main:
            save_model(self.run.model_path(row), model_name=self.cfg.student,
                       model_options=self.cfg.student_options, num_classes=self.num_classes,
                       state_dict=self.student.state_dict(), data=self._data_info(), role=row)

    def _finish_teacher_row(self, stage_result: Optional[Dict[str, Any]] = None) -> None:
        """Freeze the teacher, record its row (evaluated here when it was loaded) and save it."""
        self._freeze_teacher()
        if stage_result is None:
            acc = _accuracy_and_loss(self.teacher, self.x_test, self.y_test, self.cfg.eval_batch_size, self.world)[0]
            stage_result = {"epochs": 0, "best_epoch": 0, "test_acc_best": acc, "test_acc_last": acc,
                            "loaded_from": str(self.cfg.teacher_checkpoint)}
        self.results["teacher"] = {"row": "teacher", "model": self.cfg.teacher, "stages": {"teacher": stage_result},
                                   **{k: stage_result[k] for k in ("test_acc_best", "test_acc_last", "best_epoch",
                                                                   "epochs")}}
        if self.world.is_main:
            save_model(self.run.model_path("teacher"), model_name=self.cfg.teacher,
                       model_options=self.cfg.teacher_options, num_classes=self.num_classes,
                       state_dict=self.teacher.state_dict(), data=self._data_info(), role="teacher")

    def _load_teacher(self, path: str) -> None:
        info = load_model_file(Path(path))
        if info["model"] != self.cfg.teacher or info["num_classes"] != self.num_classes:
            raise ValueError(f"teacher_checkpoint {path!r} holds {info['model']!r} with {info['num_classes']} "
                             f"classes; the config expects {self.cfg.teacher!r} with {self.num_classes}")
        self.teacher.load_state_dict(info["state_dict"])

    def _data_info(self) -> Dict[str, Any]:
        return {"dataset": self.cfg.dataset, "preprocessing": self.cfg.preprocessing,
                "validation": self.cfg.validation, "options": self.cfg.dataset_options}

    def _model_settings(self) -> Dict[str, Any]:
        """Per-layer settings of the teacher and the student (part of the saved config)."""
        with torch.random.fork_rng(devices=[]):
            student = self._build(self.cfg.student, self.cfg.student_options)
        out = {}
        for role, model in (("teacher", self.teacher), ("student", student)):
            out[role] = {"layers": [{"name": n, "repr": repr(layer), "lr_scale": layer.lr_scale,
                                     "max_norm": layer.max_norm, "init_range": layer.init_range,
                                     "input_dropout": p, "output_shape": list(model.layer_output_shape(i))}
                                    for i, (n, layer, p) in enumerate(zip(model.layer_names, model.layers,
                                                                          model.input_dropout))],
                         "hint_layer" if role == "teacher" else "guided_layer":
                             self.hint_layer if role == "teacher" else
                             self._layer_index(student, self.cfg.guided_layer, "guided_layer", "student")}
        return out

    def start(self, data_dir: Optional[str]) -> None:
        self.run.write_json(self.run.config_path, {"config": self.cfg.to_dict(), "data_dir": data_dir,
                                                   "device": str(self.device), "world_size": self.world.size,
                                                   "models": self._model_settings(), "data": self.prepared.describe})

    def execute(self, ck: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        first = 0
        if ck is not None:
            first = ck["task"]
            self.results, self.n_metrics = ck["results"], ck["n_metrics"]
            self.train_seconds = ck["train_seconds"]
            if ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
            if self.world.is_main:
                self.run.truncate_metrics(self.n_metrics)
            self.teacher.load_state_dict(ck["teacher"])
            if first > 0:
                self._freeze_teacher()
            if ck["student"] is not None:
                self._new_student()
                self.student.load_state_dict(ck["student"])
        for task in range(first, len(self.tasks)):
            resume_here = ck is not None and task == first and ck["epoch"] > 0
            self._run_task(task, ck if resume_here else None)
        return self.summarise()

    def summarise(self) -> Dict[str, Any]:
        cfg = self.cfg
        n_test = self.x_test.shape[0]
        batch = _divisor_at_most(n_test, cfg.speed_batch_size)
        student = self.student
        t_teacher = _time_forward(self.teacher, self.x_test, batch, cfg.speed_repeats)
        t_student = _time_forward(student, self.x_test, batch, cfg.speed_repeats) if student is not None else None
        rows = []
        for name in ["teacher"] + list(cfg.students):
            r = dict(self.results[name])
            model = self.teacher if name == "teacher" else student
            r["params"] = _models.count_params(model)
            r["mults"] = _models.count_mults(model)
            r["inference_s"] = t_teacher if name == "teacher" else t_student
            r["speedup"] = t_teacher / r["inference_s"]
            rows.append(r)
        summary = {"preset": cfg.preset, "run_dir": str(self.run.path), "device": str(self.device),
                   "world_size": self.world.size,
                   "dataset": cfg.dataset, "data": self.prepared.describe, "teacher": cfg.teacher,
                   "student": cfg.student, "choices": cfg.choices,
                   "rows": rows, "train_seconds": round(self.train_seconds, 2),
                   "speed": {"batch_size": batch, "test_examples": n_test, "repeats": cfg.speed_repeats,
                             "measure": "median seconds of one forward pass over the test set (Table 5)"},
                   "files": {"config": str(self.run.config_path), "metrics": str(self.run.metrics_path),
                             "plot": str(self.run.plot_path), "summary": str(self.run.summary_path),
                             "models": {r["row"]: str(self.run.model_path(r["row"])) for r in rows}}}
        if self.world.is_main:
            self.run.write_json(self.run.summary_path, summary)
            self.run.plot(self.run.read_metrics())
        return summary


def default_out_dir(preset: str) -> str:
    """``runs/<preset>-<UTC time>``: the run folder used when none is given."""
    return str(Path("runs") / f"{preset}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}")


def train(preset: str = "digits", out_dir: Optional[str] = None, data_dir: Optional[str] = None,
          device: Optional[str] = None, seed: int = 0, *, resume: Optional[str] = None, quiet: bool = False,
          callback: Optional[Callable[[Dict[str, Any]], None]] = None, **overrides: Any) -> Dict[str, Any]:
    """Run ``preset`` (see ``fitnets_fast.config.PRESETS``) with ``overrides`` (any ``Config`` field) and
    return the summary dict (also written to ``<out_dir>/summary.json``).

    ``out_dir``: the run folder (default ``runs/<preset>-<UTC time>``; must not hold a run already).
    ``data_dir``: root of the downloaded data sets (digits and synthetic need none). ``device``: "auto"
    (default: CUDA if available), "cpu", "cuda". ``resume``: a run folder to continue from its last
    checkpoint (the saved config is used; ``preset`` and ``overrides`` must not be given, ``device`` and
    ``data_dir`` may). ``quiet``: no progress bars. ``callback(record)``: called after each epoch's
    checkpoint with that epoch's metrics record. Raises ``TrainingDiverged`` on a NaN/inf loss and
    ``CheckpointError`` when a resume checkpoint is missing or corrupt.

    Launched by torchrun (``RANK``, ``WORLD_SIZE``, ... set), every process calls this with the same
    arguments; ``batch_size`` is the global batch (a multiple of the number of processes, else
    ``ValueError``), ``callback`` runs on every process, rank 0 alone writes the run folder and prints, and
    a lost process makes the others raise ``fitnets_fast.distributed.DistributedFailure`` (at the latest
    after ``dist_timeout`` seconds).
    """
    if resume is not None:
        if overrides:
            raise ValueError(f"resume takes the saved config; got overrides {sorted(overrides)}")
        run = RunDir(resume)
        saved = run.read_config()
        cfg = Config.from_dict(dict(saved["config"], **({"device": device} if device else {})))
        ck = run.load_checkpoint()
        data_dir = data_dir if data_dir is not None else saved.get("data_dir")
    else:
        cfg = make_config(preset, seed=seed, **({"device": device} if device else {}), **overrides)
        out_dir = default_out_dir(preset) if out_dir is None else out_dir
        run = RunDir(out_dir)
        if run.last_path.exists() or run.config_path.exists():
            raise ValueError(f"out_dir {out_dir!r} already holds a run; resume it with resume={out_dir!r} or "
                             f"pick another folder")
        ck = None
    threads = torch.get_num_threads()
    try:
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        with launch(resolve_device(cfg.device), cfg.dist_timeout) as world, world.guard():
            world.barrier()   # every process has read the run folder before rank 0 writes to it
            trainer = _Trainer(cfg, run, data_dir, quiet, callback, world)
            if ck is None and world.is_main:
                trainer.start(data_dir)
            summary = trainer.execute(ck)
    finally:
        torch.set_num_threads(threads)
    if not quiet and world.is_main:
        print(format_table(summary))
    return summary


def evaluate_model_file(path: str, data_dir: Optional[str] = None, device: Optional[str] = None,
                        batch_size: int = 1000) -> Dict[str, Any]:
    """Rebuild the model saved at ``path`` (a ``models/<row>.pt`` file of a run) and measure its test (and
    validation) accuracy on the data set it was trained on. Returns a dict of the results."""
    from . import data as _data

    info = load_model_file(Path(path))
    dev = resolve_device(device)
    d = info["data"]
    prepared = _data.prepare(d["dataset"], data_dir, validation=d["validation"], preprocessing=d["preprocessing"],
                             device=dev, **d["options"])
    model = _models.build(info["model"], info["num_classes"], **info["options"]).to(dev)
    model.load_state_dict(info["state_dict"])
    out = {"path": str(path), "model": info["model"], "role": info["role"], "dataset": d["dataset"],
           "test_acc": _accuracy_and_loss(model, *prepared.test, batch_size)[0],
           "params": _models.count_params(model), "mults": _models.count_mults(model)}
    if prepared.valid is not None:
        out["valid_acc"] = _accuracy_and_loss(model, *prepared.valid, batch_size)[0]
    return out
