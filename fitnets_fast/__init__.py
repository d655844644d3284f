"""fitnets_fast: FitNets (Romero et al., ICLR 2015) with fused Triton (GPU) and C++ (CPU) kernels.

* ``fitnets_fast.ops``: fused ops (maxout, maxout conv/linear, hint loss, KD loss), dispatched by backend.
* ``fitnets_fast.reference``: the plain-PyTorch spec of every op.
* ``fitnets_fast.nn``: module wrappers; ``fitnets_fast.models``: every network of the paper.
* ``fitnets_fast.data``: offline loaders, the paper's preprocessing, device-side augmentation.
* ``fitnets_fast.train(...)``: the FitNets trainer (teacher, hints, KD, baselines).
* ``fitnets_fast.suggest_hints(teacher, student)``: candidate hint/guided layer pairs, best first.
"""
from __future__ import annotations

from ._backend import use_backend
from ._info import info

__version__ = "0.1.0"
__all__ = ["info", "train", "suggest_hints", "use_backend", "__version__"]


def suggest_hints(*args, **kwargs):
    """Candidate (hint, guided) layer pairs, best first; see ``fitnets_fast.hints.suggest_hints``."""
    from .hints import suggest_hints as _suggest

    return _suggest(*args, **kwargs)


def train(*args, **kwargs):
    """Run a training preset; see ``fitnets_fast.trainer.train`` for the arguments."""
    from .trainer import train as _train

    return _train(*args, **kwargs)
