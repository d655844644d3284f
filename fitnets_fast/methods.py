"""The training methods: one class each, registered once, run by ``fitnets_fast.loop.fit``.

A method says what it trains (``modules``, by checkpoint name; ``trained``, the modules whose gradients the
optimizer uses, wrapped together by DistributedDataParallel), how (``optimizer``, ``max_norm``, the limits
``max_epochs`` / ``patience``), its per-epoch ``schedule`` (learning rate, lambda), its ``loss`` on a batch
(``(logits or None, {"loss": total, ...parts})``) and what it monitors on the validation split
(``evaluate``: lower is better; the error rate, or the hint loss of stage 1).

A *row* of the result table is a list of methods run one after the other on the same student:

* ``backprop = [CrossEntropy]``: the student alone on its labels.
* ``kd = [KD]``: ``CE + lambda * H(P_T^tau, P_S^tau_s)``, lambda from ``schedules.linear_decay``.
* ``fitnets = [Hints, KD]``: the paper. Stage 1 trains the student's modules up to the guided module
  and a regressor on the hint loss (Eq. 3); the teacher runs up to its hint module and the student up to
  its guided module only. Stage 2 (KD) continues from the stage-1 student of the best validation epoch.
* ``fitnet_onestage = [OneStageFitNet]``: CE + beta * mean-MSE through a conv-BN-ReLU regressor
  (RepDistiller's "FitNet").

``Teacher`` trains the teacher on cross-entropy (pylearn2 SGD + momentum and its schedules, or PyTorch SGD
with step decay). ``ROWS`` maps row names to their methods; ``register`` adds one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import features, regressors
from .config import Config
from .distributed import World
from .feed import TeacherOutputs, accuracy_and_loss, mean_hint_loss
from .nn import KDLoss
from .optim import MaxNorm, Momentum, RMSProp, param_groups
from .schedules import exponential_decay, linear_decay, linear_ramp, step_decay

__all__ = ["Setup", "Method", "Teacher", "CrossEntropy", "KD", "Hints", "OneStageFitNet", "ROWS", "register",
           "row_methods"]

Losses = Dict[str, torch.Tensor]


@dataclass
class Setup:
    """What the methods of a run share: the settings, the frozen teacher and its outputs, the student of
    the row in progress, the hint / guided module paths, the stage-1 regressor choice, where to train."""

    cfg: Config
    teacher: nn.Module
    outputs: TeacherOutputs
    hint: str
    guided: str
    regressor: Union[str, nn.Module]
    device: torch.device
    world: World = World()
    memory_format: torch.memory_format = torch.contiguous_format
    hint_shape: Tuple[int, ...] = ()
    # the row in progress: its student, the student's guided-map shape and the parameter-owning modules
    # that run up to the guided module (what stage 1 trains; ``features.modules_before``)
    student: Optional[nn.Module] = None
    guided_shape: Tuple[int, ...] = ()
    guided_modules: Sequence[nn.Module] = ()

    def evaluate_classifier(self, model: nn.Module) -> Dict[str, Optional[float]]:
        """Validation loss / accuracy, test accuracy and the monitored error (None without a split)."""
        out: Dict[str, Optional[float]] = {"valid_loss": None, "valid_acc": None, "test_acc": None, "monitor": None}
        bs, splits = self.cfg.eval_batch_size, self.outputs.splits
        if splits.get("valid") is not None:
            out["valid_acc"], out["valid_loss"] = accuracy_and_loss(model, splits["valid"], bs, self.world)
            out["monitor"] = 1.0 - out["valid_acc"]
        if splits.get("test") is not None:
            out["test_acc"] = accuracy_and_loss(model, splits["test"], bs, self.world)[0]
        return out


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    if hasattr(optimizer, "set_lr"):
        optimizer.set_lr(lr)
    else:   # torch.optim.SGD groups carry lr_scale beside their own lr
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)


def _student_optimizer(cfg: Config, groups: List[Dict]) -> torch.optim.Optimizer:
    if cfg.student_optimizer == "sgd":
        return torch.optim.SGD([dict(g, lr=cfg.lr * g["lr_scale"]) for g in groups], lr=cfg.lr,
                               momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return RMSProp(groups, lr=cfg.lr, decay=cfg.rms_decay, floor=cfg.rms_floor)


class Method:
    """Base of every method (see the module doc). ``stage``: the name in metrics and checkpoints;
    ``compiles``: whether ``compile=True`` applies (plain ``model(x)`` forwards only)."""

    stage = ""
    compiles = False

    def __init__(self, setup: Setup, row: str, after: Sequence[Type["Method"]] = ()):
        self.setup, self.row, self.cfg = setup, row, setup.cfg
        self.modules: Dict[str, nn.Module] = {}
        self.trained: List[nn.Module] = []
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.max_norm = MaxNorm([])
        self.max_epochs, self.patience = self.cfg.max_epochs, self.cfg.patience
        self.model: nn.Module = setup.student

    def schedule(self, epoch: int, updates: int) -> Dict[str, float]:
        """Apply epoch ``epoch``'s (1-based) schedules; returns the values recorded in the metrics."""
        lr = self.cfg.lr
        if self.cfg.student_lr_schedule == "multistep":
            lr = step_decay(epoch, lr, self.cfg.lr_milestones, self.cfg.lr_decay)
            _set_lr(self.optimizer, lr)
        return {"lr": lr}

    def before_step(self, updates: int) -> None:
        """Called before each optimizer step with the number of updates done so far."""

    def loss(self, xb: torch.Tensor, yb: torch.Tensor, ids: Optional[torch.Tensor]
             ) -> Tuple[Optional[torch.Tensor], Losses]:
        raise NotImplementedError

    def evaluate(self) -> Dict[str, Optional[float]]:
        return self.setup.evaluate_classifier(self.model)

    def close(self) -> None:
        """Release hooks (called when the method's epochs end or fail)."""


class Teacher(Method):
    """The teacher on cross-entropy: pylearn2 SGD + momentum with linear / exponential / constant lr and a
    momentum ramp (``teacher_optimizer="momentum"``), or PyTorch SGD (``"sgd"``, momentum, weight decay)."""

    stage = "teacher"

    def __init__(self, setup: Setup, row: str = "teacher", after: Sequence[Type[Method]] = ()):
        super().__init__(setup, row)
        cfg, model = self.cfg, setup.teacher
        self.model = model
        self.modules = {"teacher": model}
        self.trained = [model]
        groups = param_groups([(model, 1.0)])
        if cfg.teacher_optimizer == "sgd":
            self.optimizer = torch.optim.SGD([dict(g, lr=cfg.teacher_lr * g["lr_scale"]) for g in groups],
                                             lr=cfg.teacher_lr, momentum=cfg.teacher_momentum,
                                             weight_decay=cfg.teacher_weight_decay)
        else:
            self.optimizer = Momentum(groups, lr=cfg.teacher_lr, momentum=cfg.teacher_momentum)
        self.max_norm = MaxNorm([model])
        self.max_epochs, self.patience = cfg.teacher_max_epochs, cfg.teacher_patience

    def schedule(self, epoch: int, updates: int) -> Dict[str, float]:
        cfg = self.cfg
        if cfg.teacher_lr_schedule == "linear":
            lr = linear_decay(epoch, cfg.teacher_lr, cfg.teacher_lr * cfg.teacher_lr_decay_factor,
                              cfg.teacher_lr_start, cfg.teacher_lr_saturate)
        elif cfg.teacher_lr_schedule == "exponential":
            lr = exponential_decay(updates, cfg.teacher_lr, cfg.teacher_lr_decay_factor, cfg.teacher_lr_min)
        elif cfg.teacher_lr_schedule == "multistep":
            lr = step_decay(epoch, cfg.teacher_lr, cfg.lr_milestones, cfg.lr_decay)
        else:
            lr = cfg.teacher_lr
        _set_lr(self.optimizer, lr)
        if cfg.teacher_optimizer == "sgd":
            return {"lr": lr}
        momentum = linear_ramp(epoch, cfg.teacher_momentum, cfg.teacher_momentum_final,
                               cfg.teacher_momentum_start, cfg.teacher_momentum_saturate)
        self.optimizer.set_momentum(momentum)
        return {"lr": lr, "momentum": momentum}

    def before_step(self, updates: int) -> None:
        cfg = self.cfg
        if cfg.teacher_lr_schedule == "exponential":
            _set_lr(self.optimizer, exponential_decay(updates, cfg.teacher_lr, cfg.teacher_lr_decay_factor,
                                                      cfg.teacher_lr_min))

    def loss(self, xb, yb, ids):
        logits = self.model(xb)
        return logits, {"loss": F.cross_entropy(logits, yb)}


class CrossEntropy(Method):
    """The whole student on cross-entropy (the backprop baseline)."""

    stage = "ce"
    compiles = True

    def __init__(self, setup: Setup, row: str, after: Sequence[Type[Method]] = ()):
        super().__init__(setup, row)
        student = setup.student
        self.modules = {"student": student}
        self.trained = [student]
        self.optimizer = _student_optimizer(self.cfg, self._groups())
        self.max_norm = MaxNorm([student])

    def _groups(self) -> List[Dict]:
        return param_groups([(self.setup.student, 1.0)])

    def loss(self, xb, yb, ids):
        logits = self.model(xb)
        return logits, {"loss": F.cross_entropy(logits, yb)}


class KD(CrossEntropy):
    """The whole student on ``CE + lambda * H(P_T^tau, P_S^tau_s)`` (paper Eq. 2; FitNets stage 2). After
    ``Hints`` in the same row (``after``), the modules it trained get lr x ``pretrained_lr_scale``."""

    stage = "kd"

    def __init__(self, setup: Setup, row: str, after: Sequence[Type[Method]] = ()):
        self.pretrained = list(setup.guided_modules) if any(issubclass(m, Hints) for m in after) else []
        super().__init__(setup, row)
        cfg = self.cfg
        self.kd = KDLoss(cfg.temperature, cfg.lambda_init, cfg.student_temperature,
                         soft_scale=cfg.temperature ** 2 if cfg.tau_squared else 1.0, backend=cfg.backend)

    def _groups(self) -> List[Dict]:
        student, scale = self.setup.student, self.cfg.pretrained_lr_scale
        if not self.pretrained:
            return super()._groups()
        hinted = {id(p) for m in self.pretrained for p in m.parameters()}
        children = [(m, scale if any(id(p) in hinted for p in m.parameters()) else 1.0)
                    for m in _leaves_with_params(student)]
        return param_groups(children)

    def schedule(self, epoch: int, updates: int) -> Dict[str, float]:
        out = super().schedule(epoch, updates)
        cfg = self.cfg
        self.kd.lam = linear_decay(epoch, cfg.lambda_init, cfg.lambda_final, cfg.lambda_start, cfg.lambda_saturate)
        out["lambda"] = self.kd.lam
        return out

    def loss(self, xb, yb, ids):
        logits = self.model(xb)
        teacher = self.setup.outputs.get("train", None, xb, ids)
        return logits, {"loss": self.kd(logits, teacher, yb)}


def _leaves_with_params(model: nn.Module) -> List[nn.Module]:
    """The modules that own parameters directly, each once, in registration order."""
    return [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]


class Hints(Method):
    """FitNets stage 1: the student's modules up to the guided module and a regressor on the hint loss
    (Eq. 3); monitors the validation hint loss. The teacher and the student forwards stop at the hint /
    guided module. The best-validation student continues into the next method (KD) without the regressor."""

    stage = "hints"

    def __init__(self, setup: Setup, row: str, after: Sequence[Type[Method]] = ()):
        super().__init__(setup, row)
        cfg, student = self.cfg, setup.student
        reg, self.description = regressors.build(setup.regressor, setup.teacher.get_submodule(setup.hint),
                                                 setup.hint_shape, setup.guided_shape, backend=cfg.backend)
        reg = reg.to(setup.device, memory_format=setup.memory_format)
        self.regressor = reg
        self.modules = {"student": student, "regressor": reg}
        self.trained = list(setup.guided_modules) + [reg]
        self.optimizer = _student_optimizer(cfg, param_groups([(m, 1.0) for m in self.trained]))
        self.max_norm = MaxNorm(self.trained)
        self.max_epochs, self.patience = cfg.hint_max_epochs, cfg.hint_patience

    def loss(self, xb, yb, ids):
        setup = self.setup
        guided = features.forward_to(self.model, setup.guided, xb)
        return None, {"loss": self.regressor(guided, setup.outputs.get("train", setup.hint, xb, ids))}

    def evaluate(self) -> Dict[str, Optional[float]]:
        setup = self.setup
        out: Dict[str, Optional[float]] = {"valid_loss": None, "valid_acc": None, "test_acc": None, "monitor": None}
        if setup.outputs.splits.get("valid") is not None:
            out["valid_loss"] = out["monitor"] = mean_hint_loss(
                self.model, setup.guided, self.regressor, setup.hint, setup.outputs, "valid",
                self.cfg.eval_batch_size, setup.world)
        return out


class OneStageFitNet(Method):
    """RepDistiller's FitNet: ``CE + beta * mean-MSE(conv_bn_relu(guided map), hint map)``, whole student."""

    stage = "onestage"

    def __init__(self, setup: Setup, row: str, after: Sequence[Type[Method]] = ()):
        super().__init__(setup, row)
        cfg, student = self.cfg, setup.student
        reg = regressors.conv_bn_relu(setup.hint_shape, setup.guided_shape)
        if setup.world.distributed and setup.device.type == "cuda":   # BatchNorm statistics of the global batch
            reg = nn.SyncBatchNorm.convert_sync_batchnorm(reg)       # (CPU: of each process's shard)
        self.regressor = reg = reg.to(setup.device, memory_format=setup.memory_format)
        self.modules = {"student": student, "regressor": reg}
        self.trained = [student, reg]
        self.tap = features.Tap(student, setup.guided)
        self.optimizer = _student_optimizer(cfg, param_groups([(student, 1.0), (reg, 1.0)]))
        self.max_norm = MaxNorm([student])

    def loss(self, xb, yb, ids):
        logits = self.model(xb)
        hint = self.setup.outputs.get("train", self.setup.hint, xb, ids)
        mse = F.mse_loss(self.regressor(self.tap.value), hint)
        return logits, {"loss": F.cross_entropy(logits, yb) + self.cfg.onestage_beta * mse, "mse": mse}

    def close(self) -> None:
        self.tap.remove()


#: Row name -> the methods it runs, in order, on one student.
ROWS: Dict[str, Tuple[Type[Method], ...]] = {}


def register(row: str, *methods: Type[Method]) -> None:
    """Make ``row`` (a ``Config.methods`` name) run ``methods`` in order on one fresh student."""
    if not methods or not all(isinstance(m, type) and issubclass(m, Method) for m in methods):
        raise TypeError("register(row, *methods) takes Method subclasses")
    ROWS[row] = tuple(methods)


register("backprop", CrossEntropy)
register("kd", KD)
register("fitnets", Hints, KD)
register("fitnet_onestage", OneStageFitNet)


def row_methods(row: str) -> Tuple[Type[Method], ...]:
    if row not in ROWS:
        raise ValueError(f"unknown method {row!r}; known: {', '.join(ROWS)}")
    return ROWS[row]
