"""fitnets_fast: FitNets (Romero et al., ICLR 2015) with fused Triton (GPU) and C++ (CPU) kernels.

* ``fitnets_fast.ops``: fused ops (maxout, maxout conv/linear, hint loss, KD loss), dispatched by backend
  (``ops.backend_used`` tells which runs a call; ``set_checks(True)`` turns on debug checks of the inputs).
* ``fitnets_fast.reference``: the plain-PyTorch spec of every op.
* ``fitnets_fast.nn``: module wrappers; ``fitnets_fast.models``: every network of the paper.
* ``fitnets_fast.data``: offline loaders, the paper's preprocessing, device-side augmentation.
* ``fitnets_fast.train(...)``: a preset run (teacher, hints, KD, baselines); ``seeds=[...]`` repeats it over
  seeds and reports mean ± std (``fitnets_fast.seeds``).
* ``fitnets_fast.distill(teacher, student, train, ...)``: FitNets and its baselines for networks of your own.
* ``fitnets_fast.suggest_hints(teacher, student)``: candidate hint/guided layer pairs, best first.
"""
from __future__ import annotations

from . import _alloc  # noqa: F401  (reads FITNETS_FAST_BUFFER_POOL_MB: a malformed value fails here, loudly)
from ._backend import use_backend
from ._checks import set_checks
from ._info import info

__version__ = "0.1.0"
__all__ = ["info", "set_checks", "train", "distill", "suggest_hints", "use_backend", "__version__"]


def suggest_hints(*args, **kwargs):
    """Candidate (hint, guided) layer pairs, best first; see ``fitnets_fast.hints.suggest_hints``."""
    from .hints import suggest_hints as _suggest

    return _suggest(*args, **kwargs)


def train(*args, seeds=None, **kwargs):
    """Run a training preset; see ``fitnets_fast.trainer.train`` for the arguments.

    ``seeds=[0, 1, 2]`` runs the preset once per seed (one sub-folder each) and returns the aggregate
    (mean ± sample std of every row); ``workers=`` then sets how many seeds run at once. See
    ``fitnets_fast.seeds.train_seeds``. ``resume=`` a multi-seed run folder finishes that run.
    """
    from . import seeds as _seeds

    resume = kwargs.get("resume")
    if seeds is not None or (resume is not None and _seeds.is_multi_seed_run(resume)):
        if "seed" in kwargs or len(args) > 4:
            raise ValueError("give either seed= (one run) or seeds= (several), not both")
        if seeds is not None:
            kwargs["seeds"] = seeds
        return _seeds.train_seeds(*args, **kwargs)
    from .trainer import train as _train

    return _train(*args, **kwargs)


def distill(*args, **kwargs):
    """Distil a teacher into a student of your own; see ``fitnets_fast.distillation.distill`` for the arguments."""
    from .distillation import distill as _distill

    return _distill(*args, **kwargs)
