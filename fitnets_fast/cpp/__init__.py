"""The "cpp" backend: fused C++ CPU kernels (``fitnets_fast._C``) behind ``torch.library`` custom ops.

Exposes the ``*_impl`` functions of ``fitnets_fast.reference`` with identical signatures, for CPU float32 /
float64 tensors, and bfloat16 for the maxout ops (their bias add and max run in float, rounded once). Each kernel is a custom op (``fitnets_fast_cpp::maxout_bias``, ``maxout_bias_backward``,
``maxout_pool_bias``, ``maxout_pool_bias_backward``, ``hint_epilogue``, ``kd_loss``, ``kd_loss_teacher_grad``)
with a fake (meta) implementation and an autograd formula, so ``torch.compile(fullgraph=True)`` traces models
using them without graph breaks; eager calls run the same functions through a plain
``torch.autograd.Function`` (see ``_common.fused_op``). Convolutions and matmuls stay PyTorch's (bias-free);
the kernels fuse what follows them.
Importing this package raises ImportError when the extension was not built; ``fitnets_fast._backend``
records that and falls back to the reference.
"""
from .hint_loss import hint_loss_impl
from .kd_loss import kd_loss_impl
from .maxout import maxout_conv2d_impl, maxout_impl, maxout_linear_impl

__all__ = ["maxout_impl", "maxout_conv2d_impl", "maxout_linear_impl", "hint_loss_impl", "kd_loss_impl"]
