"""A run: the teacher, then each row of methods (backprop, KD, FitNets, one-stage FitNet), resumable.

``train(preset="digits", ...)`` runs a preset from ``fitnets_fast.config`` and ``fitnets_fast.distill``
runs the same machinery on networks and data of your own; both return the summary (``summary.json``).
The run is a list of *tasks*: ``teacher`` first, then for each row of ``Config.methods`` its methods in
order (``fitnets_fast.methods.ROWS``; FitNets is ``[Hints, KD]``), each trained by
``fitnets_fast.loop.Loop.fit``.

* The teacher is trained on cross-entropy (or loaded from ``teacher_checkpoint``, or given trained) and then
  frozen (eval mode, no gradients).
* Every row starts from the same student initialisation (seeded by ``seed``; a given student's own
  initial weights) and continues through its methods with the best-validation weights of the previous one.
* Teacher features come from forward hooks on named modules (``fitnets_fast.features``); the hint stage's
  forwards stop right after the hint / guided module.
* Each row reports the test accuracy of its best-validation epoch and of its last epoch; the kept weights
  are the best-validation ones. The batch order of epoch ``e`` depends only on ``(seed, e)`` for tensor
  data (a DataLoader's sampler decides its own).

After every epoch the full state (weights, optimizer, RNG, the loop's ``FitState``, results) is written
atomically to ``checkpoints/last.pt``; ``train(resume=RUN_DIR)`` (or ``distill(..., resume=True)``)
continues from it and ends with exactly the metrics and weights of an uninterrupted run (same device, CPU
deterministic). Under ``torchrun`` the loop trains with DistributedDataParallel (``fitnets_fast.distributed``);
only rank 0 writes files. Tensor data stay on the device; with ``cache_teacher`` and no augmentation the
frozen teacher's logits and hint maps are computed once per split.
"""
from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn

from . import _backend, features
from . import models as _models
from . import regressors
from .config import Config, make_config
from .distributed import World, is_main_process, launch
from .feed import TeacherOutputs, TensorSplit, accuracy_and_loss, as_split
from .loop import FitState, Loop, TrainingDiverged, derive_seed
from .methods import Hints, Method, Setup, Teacher, row_methods
from .run_files import (CheckpointError, RunDir, RunFolderError, RunInterrupted, format_table, load_model_file,
                        save_model)

__all__ = ["train", "default_out_dir", "evaluate_model_file", "TrainingDiverged", "resolve_device", "Models",
           "run"]


def resolve_device(device: Optional[str]) -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; ``"cpu"``/``"cuda[:N]"``: that device, checked to exist.
    Anything else (``"mps"``, a typo) raises ``ValueError``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


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


def _size(model: nn.Module) -> Tuple[int, Optional[int]]:
    """``(params, mults)``: the authors' counts for a ``MaxoutNet``; all parameters and no count otherwise."""
    if isinstance(model, _models.MaxoutNet):
        return _models.count_params(model), _models.count_mults(model)
    return sum(p.numel() for p in model.parameters()), None


class Models:
    """The networks of a run and how to describe them in its files.

    ``teacher``: the teacher module; ``new_student()``: a student at the run's initialisation (called at the
    start of every row, after the global RNG is seeded from ``(seed, "student")``); ``teacher_name`` /
    ``student_name`` and ``*_options``: what model files record (a ``models.build`` name, or the class
    name of a module of your own); ``teacher_trained``: where the trained teacher came from (None: train it).
    """

    def __init__(self, teacher: nn.Module, new_student: Callable[[], nn.Module], *, teacher_name: str,
                 student_name: str, teacher_options: Optional[Dict[str, Any]] = None,
                 student_options: Optional[Dict[str, Any]] = None, teacher_trained: Optional[str] = None):
        self.teacher, self.new_student = teacher, new_student
        self.teacher_name, self.student_name = teacher_name, student_name
        self.teacher_options, self.student_options = teacher_options or {}, student_options or {}
        self.teacher_trained = teacher_trained


class _Run:
    """One run: its splits and models, the task list, and the state saved after each epoch."""

    def __init__(self, cfg: Config, run: RunDir, world: World, device: torch.device, models: Models,
                 splits: Dict[str, Any], *, hint: Union[int, str, None], guided: Union[int, str, None],
                 regressor: Union[str, nn.Module], data_info: Dict[str, Any], describe: Any, num_classes: int,
                 augment: Optional[Callable], quiet: bool, callback: Optional[Callable[[Dict[str, Any]], None]]):
        self.cfg, self.run, self.world, self.device, self.models = cfg, run, world, device, models
        self.callback, self.data_info, self.describe = callback, data_info, describe
        self.num_classes = num_classes
        world.local_batch_size(cfg.batch_size)
        self.loop = Loop(cfg, device, world, quiet)
        mf = self.loop.memory_format
        self.splits = {name: None if data is None else as_split(data, device, name, mf)
                       for name, data in splits.items()}
        if self.splits.get("train") is None:
            raise ValueError("train data is required")
        self.splits["train"].make_batches(cfg.batch_size, cfg.seed, augment)
        with torch.random.fork_rng(devices=[]):   # a shuffling DataLoader draws its order from the global RNG
            self.example = next(iter(self.splits["train"].chunks(2, World())))[0][:2]
        teacher = models.teacher
        hint = self._default(teacher, hint, "hint_layer", "teacher")
        self.tasks: List[Tuple[str, Type[Method]]] = [("teacher", Teacher)] + [
            (row, m) for row in cfg.methods for m in row_methods(row)]
        self.results: Dict[str, Any] = {}
        self.n_metrics = 0
        self.train_seconds = 0.0
        self._guided_name = guided
        outputs = TeacherOutputs(teacher, self.splits, cfg.eval_batch_size, cfg.cache_teacher, augment is not None)
        self.setup = Setup(cfg, teacher, outputs, hint, "", regressor, device, world, mf,
                           hint_shape=features.output_shape(teacher, hint, self.example))
        self.student: Optional[nn.Module] = None

    @staticmethod
    def _default(model: nn.Module, name, setting: str, role: str) -> str:
        """The module path of ``name``; None takes the model's own default (a ``MaxoutNet``'s)."""
        if name is None:
            name = getattr(model, "hint_layer" if role == "teacher" else "guided_layer", None)
            if name is None:
                raise ValueError(f"{setting} is not set and the {role} model has no default")
        path = features.resolve(model, name, role)
        if isinstance(model, _models.MaxoutNet) and path == f"layers.{len(model.layers) - 1}":
            raise ValueError(f"{setting} must be a hidden layer, not the {role}'s output layer")
        return path

    # -- models ---------------------------------------------------------------------------------------
    def _new_student(self) -> None:
        torch.manual_seed(derive_seed(self.cfg.seed, "student"))
        student = self.models.new_student().to(self.device, memory_format=self.loop.memory_format)
        self._use_student(student)

    def _use_student(self, student: nn.Module) -> None:
        setup = self.setup
        self.student = setup.student = student
        setup.guided = self._default(student, self._guided_name, "guided_layer", "student")
        setup.guided_shape = features.output_shape(student, setup.guided, self.example)
        setup.guided_modules = features.modules_before(student, setup.guided, self.example)

    def _freeze_teacher(self) -> None:
        self.models.teacher.eval()
        self.models.teacher.requires_grad_(False)

    # -- checkpoints ----------------------------------------------------------------------------------
    def _state(self, task: int, state: Optional[FitState], method: Optional[Method]) -> Dict[str, Any]:
        modules = method.modules if method is not None else {}
        return {"task": task, "epoch": state.epoch if state is not None else 0,
                "teacher": self.models.teacher.state_dict(),
                "student": None if self.student is None else self.student.state_dict(),
                "regressor": modules["regressor"].state_dict() if "regressor" in modules else None,
                "optimizer": None if method is None else method.optimizer.state_dict(),
                "progress": None if state is None else state.to_dict(), "rng": _rng_state(),
                "results": self.results, "n_metrics": self.n_metrics, "train_seconds": self.train_seconds,
                "scaler": self.loop.scaler.state_dict()}

    def _save(self, task: int, state: Optional[FitState] = None, method: Optional[Method] = None,
              improved: bool = False) -> None:
        if not self.world.is_main:
            return
        best = ({"task": task, "epoch": state.best_epoch, "state": state.best_state} if improved else None)
        self.run.save_checkpoint(self._state(task, state, method), best)

    # -- the run --------------------------------------------------------------------------------------
    def _run_task(self, task: int, ck: Optional[Dict[str, Any]]) -> None:
        cfg = self.cfg
        row, cls = self.tasks[task]
        if cls is Teacher and self.models.teacher_trained is not None:
            self._finish_teacher_row()
            self._save(task + 1)
            return
        methods = row_methods(row) if row != "teacher" else (Teacher,)
        position = methods.index(cls)
        if ck is None and row != "teacher" and position == 0:
            self._new_student()
        method = cls(self.setup, row, after=methods[:position])
        if cfg.compile and method.compiles:
            method.model.compile()
        state = None
        if ck is not None:
            for name, module in method.modules.items():
                module.load_state_dict(ck[name])
            method.optimizer.load_state_dict(ck["optimizer"])
            state = FitState.from_dict(ck["progress"])
            _set_rng_state(ck["rng"])

        def save(st: FitState, improved: bool, record: Dict[str, Any]) -> None:
            self.train_seconds += record["seconds"]
            if self.world.is_main:
                self.run.append_metrics(record)
            self.n_metrics += 1
            self._save(task, st, method, improved)
            if self.callback is not None:
                self.callback(dict(record))

        state = self.loop.fit(method, self.splits["train"], state, save=save)
        self._finish_method(method, state)
        self._save(task + 1)

    def _finish_method(self, method: Method, state: FitState) -> None:
        """Record the method's result; its modules already hold their best-validation weights."""
        row, stage = method.row, method.stage
        by_epoch = {r["epoch"]: r for r in state.records}
        best = by_epoch[state.best_epoch]
        result = {"epochs": state.epoch, "best_epoch": state.best_epoch, "best_valid": state.best_value,
                  "test_acc_best": best["test_acc"], "test_acc_last": state.records[-1]["test_acc"],
                  "valid_acc_best": best["valid_acc"]}
        if stage == "teacher":
            self._finish_teacher_row(result)
            return
        entry = self.results.setdefault(row, {"row": row, "model": self.models.student_name, "stages": {}})
        entry["stages"][stage] = result
        if method is not self._last_of_row(method):
            return
        entry.update({k: result[k] for k in ("test_acc_best", "test_acc_last", "best_epoch", "epochs")})
        if self.world.is_main:
            save_model(self.run.model_path(row), model_name=self.models.student_name,
                       model_options=self.models.student_options, num_classes=self.num_classes,
                       state_dict=self.student.state_dict(), data=self.data_info, role=row)

    @staticmethod
    def _last_of_row(method: Method):
        return method if type(method) is row_methods(method.row)[-1] else None

    def _finish_teacher_row(self, result: Optional[Dict[str, Any]] = None) -> None:
        """Freeze the teacher, record its row (evaluated here when it was given trained) and save it."""
        self._freeze_teacher()
        teacher = self.models.teacher
        if result is None:
            test = self.splits.get("test")
            acc = (accuracy_and_loss(teacher, test, self.cfg.eval_batch_size, self.world)[0]
                   if test is not None else None)
            result = {"epochs": 0, "best_epoch": 0, "test_acc_best": acc, "test_acc_last": acc,
                      "loaded_from": self.models.teacher_trained}
        self.results["teacher"] = {"row": "teacher", "model": self.models.teacher_name,
                                   "stages": {"teacher": result},
                                   **{k: result[k] for k in ("test_acc_best", "test_acc_last", "best_epoch",
                                                             "epochs")}}
        if self.world.is_main:
            save_model(self.run.model_path("teacher"), model_name=self.models.teacher_name,
                       model_options=self.models.teacher_options, num_classes=self.num_classes,
                       state_dict=teacher.state_dict(), data=self.data_info, role="teacher")

    def _model_settings(self) -> Dict[str, Any]:
        """The hint / guided modules, their output shapes, the stage-1 regressor and, for a ``MaxoutNet``,
        its per-layer settings (part of the saved config)."""
        setup = self.setup
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, "student"))
            student = self.models.new_student().to(self.device)
            guided = self._default(student, self._guided_name, "guided_layer", "student")
            guided_shape = features.output_shape(student, guided, self.example)
            try:
                regressor = regressors.build(setup.regressor, setup.teacher.get_submodule(setup.hint),
                                             setup.hint_shape, guided_shape, backend=self.cfg.backend)[1]
            except ValueError as exc:
                if any(issubclass(m, Hints) for row in self.cfg.methods for m in row_methods(row)):
                    raise
                regressor = f"none ({exc})"
        out: Dict[str, Any] = {"regressor": regressor}
        for role, model, path, shape in (("teacher", setup.teacher, setup.hint, setup.hint_shape),
                                         ("student", student, guided, guided_shape)):
            entry: Dict[str, Any] = {"class": type(model).__name__,
                                     "hint" if role == "teacher" else "guided": path, "output_shape": list(shape)}
            if isinstance(model, _models.MaxoutNet):
                entry["layers"] = [{"name": n, "repr": repr(layer), "lr_scale": layer.lr_scale,
                                    "max_norm": layer.max_norm, "init_range": layer.init_range,
                                    "input_dropout": p, "output_shape": list(model.layer_output_shape(i))}
                                   for i, (n, layer, p) in enumerate(zip(model.layer_names, model.layers,
                                                                         model.input_dropout))]
                entry["hint_layer" if role == "teacher" else "guided_layer"] = int(path.split(".")[1])
            out[role] = entry
        return out

    def start(self, extra: Dict[str, Any]) -> None:
        self.run.write_json(self.run.config_path, {"config": self.cfg.to_dict(), **extra,
                                                   "device": str(self.device), "world_size": self.world.size,
                                                   "models": self._model_settings(), "data": self.describe})

    def execute(self, ck: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        first = 0
        if ck is not None:
            first = ck["task"]
            self.results, self.n_metrics = ck["results"], ck["n_metrics"]
            self.train_seconds = ck["train_seconds"]
            if ck.get("scaler"):
                self.loop.scaler.load_state_dict(ck["scaler"])
            self.models.teacher.load_state_dict(ck["teacher"])
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
        test = self.splits.get("test")
        timed = isinstance(test, TensorSplit)
        n_test = len(test) if timed else None
        batch = _divisor_at_most(n_test, cfg.speed_batch_size) if timed else None
        teacher, student = self.models.teacher, self.student
        t_teacher = _time_forward(teacher, test.x, batch, cfg.speed_repeats) if timed else None
        t_student = (_time_forward(student, test.x, batch, cfg.speed_repeats)
                     if timed and student is not None else None)
        rows = []
        for name in ["teacher"] + list(cfg.methods):
            r = dict(self.results[name])
            r["params"], r["mults"] = _size(teacher if name == "teacher" else student)
            r["inference_s"] = t_teacher if name == "teacher" else t_student
            r["speedup"] = t_teacher / r["inference_s"] if timed else None
            rows.append(r)
        summary = {"preset": cfg.preset, "run_dir": str(self.run.path), "device": str(self.device),
                   "world_size": self.world.size, "dataset": cfg.dataset, "data": self.describe,
                   "teacher": self.models.teacher_name, "student": self.models.student_name,
                   "choices": cfg.choices, "rows": rows, "train_seconds": round(self.train_seconds, 2),
                   "speed": {"batch_size": batch, "test_examples": n_test, "repeats": cfg.speed_repeats,
                             "measure": "median seconds of one forward pass over the test set (Table 5)"},
                   "files": {"config": str(self.run.config_path), "metrics": str(self.run.metrics_path),
                             "plot": str(self.run.plot_path), "summary": str(self.run.summary_path),
                             "models": {r["row"]: str(self.run.model_path(r["row"])) for r in rows}}}
        if self.splits.get("valid") is None:
            summary["selection"] = ("no validation split: early stopping and the best epoch use the last "
                                    "epoch")
        summary["backends_used"] = _backend.used()   # what each op actually ran on (eager calls, this process)
        if self.world.is_main:
            self.run.write_json(self.run.config_path, {**self.run.read_config(),
                                                       "backends_used": summary["backends_used"]})
            self.run.write_json(self.run.summary_path, summary)
            self.run.plot(self.run.read_metrics())
        return summary


def run(cfg: Config, run_dir: RunDir, ck: Optional[Dict[str, Any]], build: Callable[[World, torch.device], dict],
        *, quiet: bool, callback: Optional[Callable[[Dict[str, Any]], None]], extra: Dict[str, Any]
        ) -> Dict[str, Any]:
    """Open the process group, make the run from ``build(world, device)`` (the keyword arguments of the run
    besides settings: models, splits, hint, guided, regressor, data_info, describe, augment), start or resume
    it, and return the summary (rank 0 prints the table unless ``quiet``)."""
    threads = torch.get_num_threads()
    try:
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        with launch(resolve_device(cfg.device), cfg.dist_timeout) as world, world.guard():
            world.barrier()   # every process has read the run folder before rank 0 writes to it
            device = world.device(resolve_device(cfg.device))
            r = _Run(cfg, run_dir, world, device, quiet=quiet, callback=callback, **build(world, device))
            if ck is None and world.is_main:
                r.start(extra)
            summary = r.execute(ck)
    except KeyboardInterrupt:   # say whether --resume continues from a checkpoint
        raise RunInterrupted(str(run_dir.path), run_dir.last_path.exists()) from None
    except OSError as exc:      # a full disk, a lost permission (data not found has its own message)
        if isinstance(exc, FileNotFoundError):
            raise
        raise RunFolderError(f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}; the run "
                             f"folder keeps its last checkpoint: fix this, then resume it") from exc
    finally:
        torch.set_num_threads(threads)
        run_dir.release()
    if not quiet and world.is_main:
        print(format_table(summary))
    return summary


def _preset_parts(cfg: Config, data_dir: Optional[str], world: World, device: torch.device) -> Dict[str, Any]:
    """The run's models and data for a preset config: ``models.build`` networks and a prepared data set."""
    from . import data as _data

    prepared = _data.prepare(cfg.dataset, data_dir, validation=cfg.validation, preprocessing=cfg.preprocessing,
                             device=device, **cfg.dataset_options)
    num_classes = len(prepared.classes)
    shape = tuple(prepared.train[0].shape[1:])
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def build(name: str, options: Dict[str, Any]) -> nn.Module:
        model = _models.build(name, num_classes, **{"backend": cfg.backend, **options})
        if tuple(model.input_shape) != shape:
            raise ValueError(f"model {name!r} expects inputs {tuple(model.input_shape)}, the data set "
                             f"{cfg.dataset!r} gives {shape}")
        return model.to(device, memory_format=memory_format)

    torch.manual_seed(derive_seed(cfg.seed, "teacher"))
    teacher = build(cfg.teacher, cfg.teacher_options)
    trained = None
    if cfg.teacher_checkpoint:
        info = load_model_file(Path(cfg.teacher_checkpoint))
        if info["model"] != cfg.teacher or info["num_classes"] != num_classes:
            raise ValueError(f"teacher_checkpoint {cfg.teacher_checkpoint!r} holds {info['model']!r} with "
                             f"{info['num_classes']} classes; the config expects {cfg.teacher!r} with {num_classes}")
        teacher.load_state_dict(info["state_dict"])
        trained = str(cfg.teacher_checkpoint)
    augment = None
    if cfg.augment == "window_and_flip":
        pad = cfg.augment_pad
        augment = lambda x, generator=None: _data.window_and_flip(x, pad=pad, generator=generator)  # noqa: E731
    models = Models(teacher, lambda: build(cfg.student, cfg.student_options), teacher_name=cfg.teacher,
                    student_name=cfg.student, teacher_options=cfg.teacher_options,
                    student_options=cfg.student_options, teacher_trained=trained)
    return dict(models=models, splits={"train": prepared.train, "valid": prepared.valid, "test": prepared.test},
                hint=cfg.hint_layer, guided=cfg.guided_layer, regressor=cfg.regressor,
                data_info={"dataset": cfg.dataset, "preprocessing": cfg.preprocessing,
                           "validation": cfg.validation, "options": cfg.dataset_options},
                describe=prepared.describe, num_classes=num_classes, augment=augment)


def new_run_dir(out_dir: Optional[str], default: str, settings: Dict[str, Any]) -> RunDir:
    """The folder of a new run: claimed and locked by the main process before any data are loaded
    (``RunDir.create``: ``default``, or ``default-2``, ... when taken, if ``out_dir`` is None); other
    torchrun processes only name it (they never write to it)."""
    if is_main_process():
        return RunDir.create(out_dir, default=default, settings=settings)
    return RunDir(default if out_dir is None else out_dir)


def reopen_run_dir(path: str) -> Tuple[RunDir, Dict[str, Any], Optional[Dict[str, Any]]]:
    """``(run folder, saved settings, checkpoint or None)`` of a run to resume. The main process locks the
    folder, removes leftover temporary files and, once the checkpoint is known to be this run's, drops
    metrics records past it (saying so). A run stopped before its first checkpoint gives None: it starts
    again from the beginning with its saved settings."""
    run_dir = RunDir(path)
    main = is_main_process()
    if main:
        run_dir.claim()
    try:
        saved = run_dir.read_config()
        ck = run_dir.load_checkpoint() if run_dir.last_path.exists() or run_dir.has_results() else None
        if main:
            if ck is None:
                print(f"{run_dir.path} has no checkpoint: starting the run again from the beginning with its "
                      f"saved settings", file=sys.stderr)
            note = run_dir.repair_metrics(0 if ck is None else ck["n_metrics"])
            if note:
                print(note, file=sys.stderr)
    except BaseException:
        run_dir.release()
        raise
    return run_dir, saved, ck


def default_out_dir(preset: str) -> str:
    """``runs/<preset>-<UTC time>``: the run folder used when none is given."""
    return str(Path("runs") / f"{preset}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}")


def train(preset: str = "digits", out_dir: Optional[str] = None, data_dir: Optional[str] = None,
          device: Optional[str] = None, seed: int = 0, *, resume: Optional[str] = None, quiet: bool = False,
          callback: Optional[Callable[[Dict[str, Any]], None]] = None, **overrides: Any) -> Dict[str, Any]:
    """Run ``preset`` (see ``fitnets_fast.config.PRESETS``) with ``overrides`` (any ``Config`` field) and
    return the summary dict (also written to ``<out_dir>/summary.json``).

    ``out_dir``: the run folder (must not hold a run already); default ``runs/<preset>-<UTC time>``, with a
    ``-2``, ``-3``, ... suffix when another run took that name. The folder is claimed and locked before any
    data are loaded (``RunDir.create``). ``data_dir``: root of the downloaded data sets (digits and synthetic
    need none). ``device``: "auto" (default: CUDA if available), "cpu", "cuda". ``resume``: a run folder to
    continue from its last checkpoint (the saved config is used; ``preset`` and ``overrides`` must not be
    given, ``device`` and ``data_dir`` may); a run stopped before its first checkpoint starts again from the
    beginning. ``quiet``: no progress bars. ``callback(record)``: called after each epoch's checkpoint with
    that epoch's metrics record. Raises ``TrainingDiverged`` on a NaN/inf loss, ``CheckpointError`` when a
    resume checkpoint is corrupt or from another run, ``RunFolderError`` when the folder cannot be written
    or another process is running it, and ``RunInterrupted`` (a ``KeyboardInterrupt``) on Ctrl-C.

    Launched by torchrun (``RANK``, ``WORLD_SIZE``, ... set), every process calls this with the same
    arguments; ``batch_size`` is the global batch (a multiple of the number of processes, else
    ``ValueError``), ``callback`` runs on every process, rank 0 alone writes the run folder and prints, and
    a lost process makes the others raise ``fitnets_fast.distributed.DistributedFailure`` (at the latest
    after ``dist_timeout`` seconds).
    """
    if resume is not None:
        if overrides:
            raise ValueError(f"resume takes the saved config; got overrides {sorted(overrides)}")
        run_dir, saved, ck = reopen_run_dir(resume)
        try:
            cfg = Config.from_dict(dict(saved["config"], **({"device": device} if device else {})))
            resolve_device(cfg.device)
        except BaseException:
            run_dir.release()
            raise
        data_dir = data_dir if data_dir is not None else saved.get("data_dir")
    else:
        cfg = make_config(preset, seed=seed, **({"device": device} if device else {}), **overrides)
        resolve_device(cfg.device)   # a bad device is refused before a run folder is made
        run_dir = new_run_dir(out_dir, default_out_dir(preset), {"config": cfg.to_dict(), "data_dir": data_dir})
        ck = None
    return run(cfg, run_dir, ck, lambda world, dev: _preset_parts(cfg, data_dir, world, dev), quiet=quiet,
               callback=callback, extra={"data_dir": data_dir})


def evaluate_model_file(path: str, data_dir: Optional[str] = None, device: Optional[str] = None,
                        batch_size: int = 1000) -> Dict[str, Any]:
    """Rebuild the model saved at ``path`` (a ``models/<row>.pt`` file of a preset run) and measure its test
    (and validation) accuracy on the data set it was trained on. Returns a dict of the results."""
    from . import data as _data

    info = load_model_file(Path(path))
    if info["model"] not in _models.names():
        raise ValueError(f"{path!r} holds a {info['model']!r}, not a fitnets_fast.models network: load its "
                         f"state_dict into your own module to evaluate it")
    dev = resolve_device(device)
    d = info["data"]
    prepared = _data.prepare(d["dataset"], data_dir, validation=d["validation"], preprocessing=d["preprocessing"],
                             device=dev, **d["options"])
    model = _models.build(info["model"], info["num_classes"], **info["options"]).to(dev)
    try:
        model.load_state_dict(info["state_dict"])
    except RuntimeError as exc:   # missing, unexpected or mis-shaped weights
        lines = str(exc).splitlines()
        problem = (lines[1] if len(lines) > 1 else lines[0]).strip().rstrip(".")
        raise CheckpointError(f"model file {str(path)!r}: its weights do not fit a {info['model']!r} model with "
                              f"{info['num_classes']} classes ({problem}); the file was edited or damaged, so "
                              f"use the one its run saved") from None
    out = {"path": str(path), "model": info["model"], "role": info["role"], "dataset": d["dataset"],
           "test_acc": accuracy_and_loss(model, TensorSplit(*prepared.test), batch_size)[0]}
    out["params"], out["mults"] = _size(model)
    if prepared.valid is not None:
        out["valid_acc"] = accuracy_and_loss(model, TensorSplit(*prepared.valid), batch_size)[0]
    return out
