"""``distill``: FitNets (hints, then KD) and its baselines for any teacher / student ``nn.Module`` pair."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from . import models as _models
from .config import Config, _apply
from .run_files import CheckpointError, load_model_file
from .trainer import Models, default_out_dir, new_run_dir, reopen_run_dir, run

__all__ = ["distill"]

Data = Union[Tuple[torch.Tensor, torch.Tensor], Iterable]


def _load_teacher(teacher: Union[nn.Module, str, Path]) -> Tuple[nn.Module, str, Dict[str, Any], str]:
    """``(module, name, options, origin)`` of a teacher given as a module or a file: a ``fitnets_fast``
    model file (``models/<row>.pt`` of a run) or a whole module saved by ``torch.save(module, path)``."""
    if isinstance(teacher, nn.Module):
        return teacher, type(teacher).__name__, {}, "given"
    if not isinstance(teacher, (str, Path)):
        raise TypeError(f"teacher must be an nn.Module or the path of a saved model, got {type(teacher).__name__}")
    path = str(teacher)
    try:
        info = load_model_file(Path(path))
    except CheckpointError as exc:
        if not Path(path).is_file():
            raise
        try:
            module = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:
            raise exc from None
        if not isinstance(module, nn.Module):
            raise ValueError(f"{path!r} holds a {type(module).__name__}, not an nn.Module or a fitnets_fast "
                             f"model file") from None
        return module, type(module).__name__, {}, path
    model = _models.build(info["model"], info["num_classes"], **info["options"])
    model.load_state_dict(info["state_dict"])
    return model, info["model"], info["options"], path


Student = Union[nn.Module, Callable[[], nn.Module]]


def distill(teacher: Union[nn.Module, str, Path], student: Student, train: Data, valid: Optional[Data] = None,
            test: Optional[Data] = None, *, methods: Sequence[str] = ("fitnets",),
            hint: Union[int, str, None] = None, guided: Union[int, str, None] = None,
            regressor: Union[str, nn.Module] = "paper", out_dir: Optional[str] = None, device: str = "auto",
            seed: int = 0, seeds: Optional[Sequence[int]] = None, quiet: bool = False, resume: bool = False,
            callback: Optional[Callable[[Dict[str, Any]], None]] = None, **settings: Any) -> Dict[str, Any]:
    """Distil a trained ``teacher`` into ``student`` by each of ``methods`` and return the run's summary.

    ``teacher``: a trained ``nn.Module`` returning logits (frozen here: eval mode, no gradients) or the
    path of a saved model (a ``fitnets_fast`` model file or ``torch.save(module, path)``). ``student``: an
    ``nn.Module`` returning logits, copied for every row, so each row starts from its weights as given (they
    are not changed); or a function of no arguments returning a new one, called once after
    ``torch.manual_seed(seed)`` (so each seed of ``seeds`` starts from its own initialisation). ``train`` / ``valid`` / ``test``: a pair of tensors ``(images, labels)``, kept
    on the device (the fast path), or a ``DataLoader`` (any iterable of ``(images, labels)`` batches).
    ``valid=None``: no validation split; early stopping and the kept epoch then use the last epoch (the
    summary says so). ``test=None``: no test accuracy.

    ``methods``: rows among ``"backprop"``, ``"kd"``, ``"fitnets"`` (hints, then KD: the paper) and
    ``"fitnet_onestage"`` (``fitnets_fast.methods.ROWS``). ``hint`` / ``guided``: the teacher's and the
    student's module paths (``model.named_modules()`` names; ints index a ``MaxoutNet``'s layers, and None
    takes a ``MaxoutNet``'s default); a missing name is a ``ValueError`` listing the closest names.
    ``regressor``: "paper" (a valid conv with the teacher hint module's non-linearity), "conv_bn_relu" or an
    ``nn.Module`` of your own from the guided map to the hint map's shape (``fitnets_fast.regressors``).

    ``out_dir``: the run folder (default ``runs/distill-<UTC time>``); ``resume=True`` continues the run in
    ``out_dir`` from its last checkpoint (call again with the same arguments) and ends exactly as an
    uninterrupted run. ``settings``: any ``fitnets_fast.config.Config`` field (epochs, patience, learning
    rate, temperature, lambda schedule, amp, ...; the defaults are the paper's CIFAR recipe: RMSProp lr
    0.005, 500 epochs, patience 100). ``callback(record)`` runs after every epoch's checkpoint.

    ``seeds=[0, 1, 2]``: one run per seed in ``out_dir/seed-<n>`` (``seed`` is then not given), every seed
    with the same teacher; returns the aggregate (mean ± sample std of each row over the seeds, as
    ``fitnets_fast.seeds.train_seeds``), also written to ``out_dir/summary.json``. With a module as
    ``student`` every seed starts from its weights (only the data order and dropout vary); give a function
    to vary the initialisation too. ``resume=True`` finishes every seed.
    """
    if seeds is not None:
        if seed != 0:
            raise ValueError("give seed= (one run) or seeds= (several), not both")
        args = dict(train=train, valid=valid, test=test, methods=methods, hint=hint, guided=guided,
                    regressor=regressor, device=device, quiet=quiet, callback=callback, **settings)
        return _distill_seeds(teacher, student, seeds, out_dir, resume, args)
    if not isinstance(student, nn.Module):
        if not callable(student):
            raise TypeError(f"student must be an nn.Module or a function returning one, got "
                            f"{type(student).__name__}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            student = student()
        if not isinstance(student, nn.Module):
            raise TypeError(f"the student function must return an nn.Module, got {type(student).__name__}")
    teacher, teacher_name, teacher_options, origin = _load_teacher(teacher)
    given = dict(preset="distill", dataset="custom", description="fitnets_fast.distill", methods=list(methods),
                 seed=seed, device=device, hint_layer=hint, guided_layer=guided,
                 teacher=teacher_name, student=type(student).__name__, teacher_checkpoint=None,
                 validation=valid is not None)
    if isinstance(regressor, str):
        given["regressor"] = regressor
    elif not isinstance(regressor, nn.Module):
        raise TypeError(f"regressor must be 'paper', 'conv_bn_relu' or an nn.Module, got {type(regressor).__name__}")
    overlap = sorted(set(settings) & set(given))
    if overlap:
        raise ValueError(f"set {overlap} through distill's own arguments")
    cfg = _apply(_apply(Config(), given), settings).validate()
    if resume:
        if out_dir is None:
            raise ValueError("resume=True needs the out_dir of the run to continue")
        run_dir, saved, ck = reopen_run_dir(out_dir)
        if saved["config"] != cfg.to_dict():
            run_dir.release()
            diff = sorted(k for k in saved["config"] if saved["config"][k] != cfg.to_dict().get(k))
            raise ValueError(f"resume=True needs the run's own settings; these differ from {out_dir!r}'s: {diff}")
    else:
        run_dir, ck = new_run_dir(out_dir, default_out_dir("distill"), {"config": cfg.to_dict()}), None
    base = copy.deepcopy(student)

    def build(world, dev) -> Dict[str, Any]:
        t = teacher.to(dev)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            was = t.training
            t.eval()
            num_classes = t(_first(train)[0][:1].to(dev)).shape[1]
            t.train(was)
        models = Models(t, lambda: copy.deepcopy(base), teacher_name=teacher_name,
                        student_name=type(student).__name__, teacher_options=teacher_options,
                        teacher_trained=origin)
        return dict(models=models, splits={"train": train, "valid": valid, "test": test}, hint=hint,
                    guided=guided, regressor=regressor, data_info={"dataset": "custom"},
                    describe={"source": "distill", "splits": [k for k, v in (("train", train), ("valid", valid),
                                                                             ("test", test)) if v is not None]},
                    num_classes=num_classes, augment=None)

    return run(cfg, run_dir, ck, build, quiet=quiet, callback=callback, extra={})


def _distill_seeds(teacher, student: Student, seeds: Sequence[int], out_dir: Optional[str], resume: bool,
                   args: Dict[str, Any]) -> Dict[str, Any]:
    """``distill`` once per seed in the sub-folders of a locked multi-seed folder, then the aggregate."""
    from .seeds import check_seeds, finish_seed, multi_seed_folder, seed_dir, write_aggregate

    t0 = time.perf_counter()
    seeds = check_seeds(seeds)
    if resume and out_dir is None:
        raise ValueError("resume=True needs the out_dir of the run to continue")
    teacher, _, _, origin = _load_teacher(teacher)
    manifest = None if resume else {"kind": "distill", "seeds": seeds}
    with multi_seed_folder(out_dir, default_out_dir("distill"), manifest, out_dir if resume else None) as (run, saved):
        if saved["seeds"] != seeds:
            raise ValueError(f"resume=True needs the run's own seeds: {out_dir!r} has {saved['seeds']}, got {seeds}")
        per_seed = []
        for s in seeds:
            folder = str(seed_dir(run.path, s))
            per_seed.append(finish_seed(
                folder, start=lambda s=s, f=folder: distill(teacher, student, out_dir=f, seed=s, **args),
                resume=lambda s=s, f=folder: distill(teacher, student, out_dir=f, seed=s, resume=True, **args)))
        return write_aggregate(run, per_seed, seeds, True, t0, args["quiet"], preset="distill",
                               teacher_source=f"the same teacher for every seed ({origin})")


def _first(data: Data) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``(images, labels)`` of ``data`` (a tensor pair, or the loader's first batch)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data
    with torch.random.fork_rng(devices=[]):
        for batch in data:
            return batch
    raise ValueError("train yields no batch")
