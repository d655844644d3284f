"""The "cpp" backend: fused C++ CPU kernels (``fitnets_fast._C``) behind ``torch.library`` custom ops.

Exposes the ``*_impl`` functions of ``fitnets_fast.reference`` with identical signatures, for CPU float32 /
float64 tensors, and bfloat16 for the maxout ops (their bias add and max run in float, rounded once). Each kernel is a custom op (``fitnets_fast_cpp::maxout_bias``, ``maxout_bias_backward``,
``maxout_pool_bias``, ``maxout_pool_bias_backward``, ``hint_epilogue``, ``kd_loss``, ``kd_loss_teacher_grad``,
``dropout``)
with a fake (meta) implementation and an autograd formula, so ``torch.compile(fullgraph=True)`` traces models
using them without graph breaks; eager calls run the same functions through a plain
``torch.autograd.Function`` (see ``_common.fused_op``). Convolutions and matmuls stay PyTorch's (bias-free);
the kernels fuse what follows them.
``unsupported(op, inputs)`` says which calls the impls do not take (other devices and dtypes, more than 256
pieces); ``fitnets_fast._backend`` sends those to the reference under "auto" and refuses them when "cpp"
is named. Importing this package raises ImportError when the extension was not built;
``fitnets_fast._backend`` records that and "auto" uses the reference.
``optim`` holds the fused optimiser updates and max-norm that ``fitnets_fast.optim`` runs on CPU, ``dropout``
the teachers' input dropout (``fitnets_fast.models``).
"""
from typing import Optional

import torch

from .hint_loss import hint_loss_impl
from .kd_loss import kd_loss_impl
from .maxout import MAX_PIECES, maxout_impl
from .maxout_conv import maxout_conv2d_impl
from .maxout_linear import maxout_linear_impl
from . import dropout, optim

__all__ = ["maxout_impl", "maxout_conv2d_impl", "maxout_linear_impl", "hint_loss_impl", "kd_loss_impl",
           "unsupported"]

_BF16_OPS = ("maxout", "maxout_conv2d", "maxout_linear")  # the losses run in float32 under autocast
_PIECES_AT = {"maxout": 1, "maxout_conv2d": 3, "maxout_linear": 3, "hint_loss": 4}  # position in the inputs


def unsupported(op: str, inputs: tuple) -> Optional[str]:
    """None if ``<op>_impl`` runs these (checked, positional) inputs here, else why not."""
    x = inputs[0]
    if x.device.type != "cpu":
        return f"the cpp backend runs on CPU tensors, got {x.device}"
    if x.dtype not in (torch.float32, torch.float64) and not (x.dtype == torch.bfloat16 and op in _BF16_OPS):
        return f"the cpp backend supports float32 and float64 (and bfloat16 for the maxout ops), got {x.dtype}"
    if op in _PIECES_AT and inputs[_PIECES_AT[op]] > MAX_PIECES:
        return (f"{inputs[_PIECES_AT[op]]} pieces: the cpp kernels' one-byte winner index holds at most "
                f"{MAX_PIECES}")
    return None
