"""Triton kernels behind the ops (the ``"triton"`` backend of ``fitnets_fast._backend``).

Each op lives in its own module with its kernel, host wrapper and autograd (``torch.library.triton_op`` with
``register_autograd``, which also runs under ``TRITON_INTERPRET=1`` on CPU tensors). This package exports the
``<op>_impl`` functions with the signatures of ``fitnets_fast.reference`` (plus a keyword-only ``config`` to
force a tiling) and ``unsupported(op, inputs)``, which says which calls they do not take (tensors off CUDA
unless ``TRITON_INTERPRET=1``); ``fitnets_fast._backend`` sends those to the reference under "auto" and
refuses them when "triton" is named. Importing this package raises ImportError without triton;
``fitnets_fast._backend`` records that and "auto" uses the reference.

The source folder is the repository's top-level ``kernels/``, installed as ``fitnets_fast.kernels`` (a
``package_dir`` mapping). Imported under any other name (``import kernels`` from the repository root) it
refuses, so the ops are never registered twice.
"""
if __name__ != "fitnets_fast.kernels":
    raise ImportError(f"the Triton kernels are the package fitnets_fast.kernels; import that, not {__name__!r}")

from typing import Optional

from .._backend import _TRITON_INTERPRET
from .hint_loss import hint_loss_impl
from .kd_loss import kd_loss_impl
from .maxout import maxout_impl
from .maxout_conv import maxout_conv2d_impl
from .maxout_linear import maxout_linear_impl

__all__ = ["maxout_impl", "maxout_conv2d_impl", "maxout_linear_impl", "hint_loss_impl", "kd_loss_impl",
           "unsupported"]


def unsupported(op: str, inputs: tuple) -> Optional[str]:
    """None if ``<op>_impl`` runs these (checked, positional) inputs here, else why not."""
    device = inputs[0].device
    if device.type != "cuda" and not _TRITON_INTERPRET:
        return f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1), got {device}"
    return None
