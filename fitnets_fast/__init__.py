"""fitnets_fast: FitNets (Romero et al., ICLR 2015) with fused Triton (GPU) and C++ (CPU) kernels.

* ``fitnets_fast.ops``: fused ops (maxout, maxout conv/linear, hint loss, KD loss), dispatched by backend.
* ``fitnets_fast.reference``: the plain-PyTorch spec of every op.
* ``fitnets_fast.nn``: module wrappers; ``fitnets_fast.models``: every network of the paper.
* ``fitnets_fast.data``: offline loaders, the paper's preprocessing, device-side augmentation.
* ``fitnets_fast.train(...)``: the FitNets trainer (teacher, hints, KD, baselines); ``seeds=[...]`` repeats
  a run over seeds and reports mean ± std (``fitnets_fast.seeds``).
"""
from __future__ import annotations

from ._backend import use_backend
from ._info import info

__version__ = "0.1.0"
__all__ = ["info", "train", "use_backend", "__version__"]


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
