"""Run settings: one flat ``Config`` dataclass, the named presets, ``--set key=value`` overrides, JSON I/O.

Every hyperparameter of a run is a field here (the model-level ones, per-layer learning-rate scales, max-norm
limits and initialisation ranges, come from ``fitnets_fast.models`` and are written beside the config by the
trainer). ``Config.choices`` records, for each point where the paper and the authors' released code
disagree (README, "Faithfulness: paper vs released code"), which one the preset follows.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

__all__ = ["Config", "PRESETS", "preset_names", "make_config", "parse_overrides"]


@dataclass
class Config:
    """All settings of a run. Epoch counters are 1-based; ``*_patience`` is pylearn2's MonitorBased ``N``
    (stop after that many epochs without a strict improvement of the monitored validation value)."""

    preset: str = "custom"
    description: str = ""
    choices: Dict[str, str] = field(default_factory=dict)
    # data
    dataset: str = "digits"                  # fitnets_fast.data.prepare name
    dataset_options: Dict[str, Any] = field(default_factory=dict)
    preprocessing: str = "paper"
    validation: bool = True                  # hold out a validation split (early stopping, model selection)
    augment: Optional[str] = None            # None or "window_and_flip" (pylearn2 WindowAndFlip)
    augment_pad: int = 8
    batch_size: int = 128
    eval_batch_size: int = 1000
    # models
    teacher: str = "teacher_digits"
    teacher_options: Dict[str, Any] = field(default_factory=dict)
    student: str = "fitnet_digits"
    student_options: Dict[str, Any] = field(default_factory=dict)
    hint_layer: Optional[Union[int, str]] = None    # teacher module path (named_modules) or MaxoutNet layer
    guided_layer: Optional[Union[int, str]] = None  # index; None: the model's default (same for the student)
    regressor: str = "paper"                 # stage-1 regressor: "paper" or "conv_bn_relu" (fitnets_fast.regressors)
    methods: List[str] = field(default_factory=lambda: ["backprop", "kd", "fitnets"])   # rows: methods.ROWS
    # teacher recipe (Goodfellow et al. maxout: SGD + momentum)
    teacher_checkpoint: Optional[str] = None  # load this trained teacher instead of training one
    shared_teacher: bool = False              # several seeds (fitnets_fast.seeds): the first seed trains the
    #                                           teacher, the others load it; False: every seed trains its own
    teacher_lr: float = 0.17
    teacher_lr_schedule: str = "linear"       # "linear" (LinearDecayOverEpoch), "exponential" (per update),
    #                                           "constant" or "multistep" (lr_milestones, lr_decay)
    teacher_lr_start: int = 1
    teacher_lr_saturate: int = 500
    teacher_lr_decay_factor: float = 0.01     # linear: final lr = lr*factor; exponential: lr /= factor per update
    teacher_lr_min: float = 1e-6              # exponential only
    teacher_momentum: float = 0.5
    teacher_momentum_final: float = 0.65
    teacher_momentum_start: int = 1
    teacher_momentum_saturate: int = 250
    teacher_optimizer: str = "momentum"       # "momentum" (pylearn2) or "sgd" (torch.optim.SGD)
    teacher_weight_decay: float = 0.0         # "sgd" only
    teacher_max_epochs: int = 474
    teacher_patience: Optional[int] = None    # None: no early stopping (the CIFAR teacher runs 474 epochs)
    # student recipe (both stages): RMSProp (the paper) or SGD with momentum (the CIFAR ResNet recipe)
    student_optimizer: str = "rmsprop"        # "rmsprop" or "sgd" (torch.optim.SGD)
    lr: float = 0.005
    student_lr_schedule: str = "constant"     # "constant" or "multistep" (lr_milestones, lr_decay)
    lr_milestones: List[int] = field(default_factory=list)   # multistep: lr *= lr_decay after each of these
    lr_decay: float = 0.1
    momentum: float = 0.9                     # "sgd" only
    weight_decay: float = 0.0                 # "sgd" only
    rms_decay: float = 0.9
    rms_floor: float = 1e-5
    hint_max_epochs: int = 500
    hint_patience: Optional[int] = 100
    max_epochs: int = 500                     # stage 2 and the one-stage baselines
    patience: Optional[int] = 100
    pretrained_lr_scale: float = 1.0          # stage-2 lr multiplier of hint-trained layers (authors' -lrs)
    temperature: float = 3.0
    student_temperature: Optional[float] = None  # None: tau on the student too (paper); 1.0: released code
    tau_squared: bool = False                 # Hinton's tau^2 factor on the soft term (not in FitNets)
    lambda_init: float = 4.0
    lambda_final: float = 1.0
    lambda_start: int = 5
    lambda_saturate: int = 400
    onestage_beta: float = 100.0              # "fitnet_onestage": CE + beta * mean-MSE (RepDistiller)
    # run
    seed: int = 0
    device: str = "auto"                      # "auto", "cpu", "cuda", "cuda:N"
    backend: str = "auto"                     # fitnets_fast.ops backend of every maxout layer and loss
    num_threads: Optional[int] = None         # CPU threads for the run (None: leave torch's setting)
    cache_teacher: bool = True                # precompute frozen-teacher outputs once (only used when augment=None)
    speed_batch_size: int = 500               # Table 5 timing batch; lowered to a divisor of the test size
    speed_repeats: int = 5
    log_every: int = 10                       # batches between progress-bar refreshes (each one syncs)
    # speed and scale-out (``torchrun --nproc_per_node N``: see fitnets_fast.distributed)
    amp: str = "none"                         # "none", "bf16" (autocast; CUDA, or CPU with bf16 convs) or
    #                                           "fp16" (autocast + grad scaler; CUDA)
    channels_last: bool = False               # NHWC image batches and conv weights (oneDNN's fastest on CPU)
    compile: bool = False                     # torch.compile the student's forward in the ce and kd stages
    dist_timeout: float = 1800.0              # seconds a process waits for the others (start-up, each collective)

    def validate(self) -> "Config":
        """Check values; raises ``ValueError`` naming the field. Returns ``self``."""
        for name in ("batch_size", "eval_batch_size", "teacher_max_epochs", "hint_max_epochs", "max_epochs",
                     "speed_batch_size", "speed_repeats", "log_every", "augment_pad", "teacher_lr_start",
                     "teacher_lr_saturate", "teacher_momentum_start", "teacher_momentum_saturate",
                     "lambda_start", "lambda_saturate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("teacher_patience", "hint_patience", "patience", "num_threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be None or >= 1, got {v!r}")
        for name in ("teacher_lr", "lr", "rms_floor", "temperature", "pretrained_lr_scale", "teacher_lr_min",
                     "dist_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.student_temperature is not None and not self.student_temperature > 0:
            raise ValueError(f"student_temperature must be None or > 0, got {self.student_temperature!r}")
        from .methods import ROWS   # the registry of rows (imports this module)

        for name, allowed in (("teacher_lr_schedule", ("linear", "exponential", "constant", "multistep")),
                              ("student_lr_schedule", ("constant", "multistep")),
                              ("teacher_optimizer", ("momentum", "sgd")), ("student_optimizer", ("rmsprop", "sgd")),
                              ("regressor", ("paper", "conv_bn_relu"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("weight_decay", "teacher_weight_decay", "lr_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones must be epochs >= 1, got {self.lr_milestones!r}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        if self.augment not in (None, "window_and_flip"):
            raise ValueError(f"augment must be None or 'window_and_flip', got {self.augment!r}")
        bad = [s for s in self.methods if s not in ROWS]
        if bad or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be distinct names from {tuple(ROWS)}, got {self.methods!r}")
        if self.lambda_saturate < self.lambda_start:
            raise ValueError("lambda_saturate must be >= lambda_start")
        if not 0.0 <= self.rms_decay < 1.0:
            raise ValueError(f"rms_decay must be in [0, 1), got {self.rms_decay!r}")
        for name in ("teacher_momentum", "teacher_momentum_final"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Config":
        """Build from a dict (e.g. a saved config.json); unknown keys raise ``ValueError``."""
        return _apply(cls(), data).validate()


_PAPER_CHOICES = {
    "student_temperature": "paper: softmax(a_S/tau) on the student (released code: tau_S=1; set student_temperature=1)",
    "tau_squared": "paper and code: no tau^2 factor",
    "lambda_schedule": "released code: 4 -> 1 linearly over epochs 5..400 (paper text: over 500 epochs)",
    "optimizer": "released code: RMSProp lr 0.005, per-layer lr scales and max-norm limits from the models",
    "stopping": "paper: 100 epochs patience, 500 max per stage, model picked on the validation split",
    "retraining": "not done: the reported accuracy is the best-validation epoch's (paper's Fig. 2 protocol)",
}

_CIFAR = dict(
    dataset="cifar10", teacher="teacher_cifar", student="fitnet4", augment="window_and_flip",
    teacher_lr=0.17, teacher_lr_schedule="linear", teacher_lr_start=1, teacher_lr_saturate=500,
    teacher_lr_decay_factor=0.01, teacher_momentum=0.5, teacher_momentum_final=0.65, teacher_momentum_start=1,
    teacher_momentum_saturate=250, teacher_max_epochs=474, teacher_patience=None,
    choices=dict(_PAPER_CHOICES,
                 augmentation="released code: WindowAndFlip (8 px zero-pad random crop + flip); paper: flips",
                 preprocessing="paper and code: GCN (55) + ZCA (bias 0.1) fit on train",
                 teacher="pylearn2 maxout cifar10.yaml recipe (SGD lr .17, momentum .5 -> .65, 474 epochs)"),
)

PRESETS: Dict[str, Dict[str, Any]] = {
    "digits": dict(
        description="Embedded 8x8 digits: small maxout teacher, thin deep maxout student; teacher + backprop, "
                    "KD and FitNets rows, over seeds 0, 1, 2 on the command line (mean ± std)",
        dataset="digits", teacher="teacher_digits", student="fitnet_digits",
        teacher_lr=0.2, teacher_lr_schedule="linear", teacher_lr_start=1, teacher_lr_saturate=60,
        teacher_lr_decay_factor=0.1, teacher_momentum=0.5, teacher_momentum_final=0.7,
        teacher_momentum_start=1, teacher_momentum_saturate=20, teacher_max_epochs=60, teacher_patience=20,
        lr=0.005, hint_max_epochs=15, hint_patience=8, max_epochs=40, patience=15,
        lambda_start=2, lambda_saturate=30, batch_size=64, speed_batch_size=100, num_threads=1,
        choices=dict(_PAPER_CHOICES,
                     lambda_schedule="scaled down: 4 -> 1 over epochs 2..30 (authors' formula)",
                     stopping="scaled down: patience 15 (hints 8), max 40 epochs (hints 15)",
                     teacher="maxout SGD + momentum recipe, scaled down: lr .2 -> .02 linearly over 60 epochs, "
                             "momentum .5 -> .7 by epoch 20, patience 20",
                     optimizer="RMSProp lr 0.005 (the CIFAR value); the digits models use lr scale 1 and "
                               "PyTorch's default init (see fitnets_fast.models)",
                     threads="1 CPU thread: the 8x8 nets' ops are too small to split; on the shared 2-core "
                             "machine 2 threads ran the preset 10x slower (10m39s vs 1m01s)"),
    ),
    "mnist": dict(
        description="Paper Table 4: MNIST maxout teacher (~361K) vs FitNet (~30K): backprop, KD, FitNets",
        dataset="mnist", teacher="teacher_mnist", student="fitnet_mnist",
        teacher_lr=0.05, teacher_lr_schedule="exponential", teacher_lr_decay_factor=1.00004, teacher_lr_min=1e-6,
        teacher_momentum=0.5, teacher_momentum_final=0.7, teacher_momentum_start=1, teacher_momentum_saturate=250,
        teacher_max_epochs=1000, teacher_patience=100,
        lr=0.0005, lambda_start=5, lambda_saturate=150, lambda_final=1.0,
        choices=dict(_PAPER_CHOICES,
                     lambda_schedule="paper: 4 -> 1 over the first 150 epochs (released yaml decays to 0)",
                     optimizer="paper/code: RMSProp lr 0.0005 fixed",
                     stopping="paper: 100 epochs patience, max 500 (yaml: no cap); 50K/10K split",
                     teacher="pylearn2 maxout mnist.yaml recipe (SGD lr .05 / 1.00004 per update, momentum "
                             ".5 -> .7, patience 100)"),
    ),
    "cifar10": dict(_CIFAR, description="Paper Tables 1 and 5: CIFAR-10 maxout teacher vs FitNet 1-4 "
                                        "(student=fitnet1..fitnet4)"),
    "cifar100": dict(_CIFAR, dataset="cifar100",
                     description="Paper Table 2: CIFAR-100 (teacher recipe of CIFAR-10; no published yaml)"),
    "svhn": dict(
        description="Paper Table 3: SVHN maxout teacher vs FitNet", dataset="svhn", teacher="teacher_svhn",
        student="fitnet_svhn",
        teacher_lr=0.2, teacher_lr_schedule="linear", teacher_lr_start=1, teacher_lr_saturate=250,
        teacher_lr_decay_factor=0.001, teacher_momentum=0.5, teacher_momentum_final=0.6,
        teacher_momentum_start=1, teacher_momentum_saturate=250, teacher_max_epochs=1000, teacher_patience=100,
        choices=dict(_PAPER_CHOICES,
                     preprocessing="paper and code: GCN + local contrast normalisation",
                     teacher="pylearn2 maxout svhn.yaml recipe (SGD lr .2, momentum .5 -> .6, patience 100)",
                     architecture="see fitnets_fast.models fitnet_svhn for the 11-conv vs FitNet 4 choice (D5)"),
    ),
    "depth": dict(_CIFAR, student="depth11_30m",
                  description="Paper Table 6 / Figure 2: deeper students at a fixed budget "
                              "(student=depth{5,7,9,11}_{30m,107m}); backprop vs KD vs FitNets"),
    "cifar100_resnet": dict(
        description="CIFAR-100 ResNets beside the paper's nets: teacher resnet56 -> student resnet20 (or --set "
                    "teacher=resnet32x4 --set student=resnet8x4); backprop, KD (T=4) and two-stage FitNets "
                    "(hints at the output of the second stage)",
        dataset="cifar100", teacher="resnet56", student="resnet20", preprocessing="mean_std", validation=False,
        augment="window_and_flip", augment_pad=4, batch_size=64, hint_layer="layer2", guided_layer="layer2",
        teacher_optimizer="sgd", teacher_lr=0.05, teacher_momentum=0.9, teacher_weight_decay=5e-4,
        teacher_lr_schedule="multistep", teacher_max_epochs=240, teacher_patience=None,
        student_optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, student_lr_schedule="multistep",
        lr_milestones=[150, 180, 210], lr_decay=0.1, max_epochs=240, patience=None, hint_max_epochs=40,
        hint_patience=None, temperature=4.0, tau_squared=True, lambda_init=1.0, lambda_final=1.0, lambda_start=1,
        lambda_saturate=1,
        choices=dict(
            recipe="Tian et al. (ICLR 2020) CIFAR-100 recipe: SGD momentum 0.9, lr 0.05 decayed x0.1 after epochs "
                   "150, 180, 210 of 240, weight decay 5e-4, batch 64, 4 px crop + flip, per-channel mean/std",
            kd="CE + T^2 * H(P_T^T, P_S^T) with T=4 (Hinton's weighting; RepDistiller weighs 0.1 CE + 0.9 T^2 KL)",
            hints="two-stage FitNets: stage 1 on the hint loss for 40 epochs at lr 0.05 (SGD), then KD",
            stopping="no validation split: every row trains all its epochs and reports its last epoch"),
    ),
}
for _name, _p in PRESETS.items():
    _p["preset"] = _name


def preset_names() -> List[str]:
    return list(PRESETS)


def make_config(preset: str = "digits", **overrides: Any) -> Config:
    """The preset's settings with ``overrides`` (field names) applied and validated."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {preset_names()}, got {preset!r}")
    cfg = _apply(Config(), PRESETS[preset])
    return _apply(cfg, overrides).validate()


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["key=value", ...]`` -> dict; values parsed as JSON when possible (``none``/``null`` -> None),
    else kept as strings. Types are checked against the field when applied."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if raw.strip().lower() in ("none", "null"):
            out[key] = None
            continue
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


_HINTS = typing.get_type_hints(Config)
_FIELDS = {f.name for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    hint = _HINTS[name]
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return None
        if hint is str:      # ``--set amp=none`` parses to None; the setting's own word is "none"
            return "none"
        raise ValueError(f"{name} must not be None")
    rest = tuple(a for a in typing.get_args(hint) if a is not type(None))
    base = (rest[0] if len(rest) == 1 else typing.Union[rest]) if optional else hint
    origin = typing.get_origin(base) or base
    if origin is bool:
        ok = isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif origin is typing.Union:   # int or str (a layer index or a module path)
        ok = isinstance(value, typing.get_args(base)) and not isinstance(value, bool)
    elif origin in (dict, list):
        ok = isinstance(value, origin) or (origin is list and isinstance(value, tuple))
        value = list(value) if ok and origin is list else value
    else:
        ok = isinstance(value, origin)
    if not ok:
        raise ValueError(f"{name} expects {base}, got {value!r}")
    return value


def _apply(cfg: Config, overrides: Dict[str, Any]) -> Config:
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(_FIELDS)}")
    return dataclasses.replace(cfg, **{k: _coerce(k, v) for k, v in overrides.items()})
