"""Knowledge-distillation loss (FitNets stage 2) on the C++ kernel.

The forward makes one streaming pass per row (online softmax: any class count) that computes the loss and
saves the row's softmax statistics (``(N, 2)`` float64); when the student logits will need a gradient it
also writes ``dL/ds`` in that pass, from the exponentials it has just computed. The backward then only
scales that buffer by the incoming gradient (nothing at all for the usual gradient of 1), and makes
``dL/dt`` from the statistics in its own pass when the teacher logits require grad.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .. import _C, _alloc
from . import _common

_REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
_STATS = 2  # per-row statistics for the teacher gradient (csrc/kd_loss.cpp: Stat)


def _kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             temperature: float, student_temperature: float, weight: float, reduction: str,
             ignore_index: int, student_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(N, K)`` logits, ``(N,)`` integer target; ``weight = lam * soft_scale``.

    Returns (loss: 0-dim, or ``(N,)`` for reduction "none"; row statistics ``(N, 2)`` float64;
    ``dL/ds (N, K)`` under the reduction for an incoming gradient of 1 if ``student_grad``, else ``(0,)``).
    """
    s, t, y = _contiguous(student_logits, teacher_logits, target)
    loss, stats, grad = _outputs(s, reduction, student_grad)
    n, k = s.shape
    total = _C.kd_forward(_common.dtype_name(s), s.data_ptr(), t.data_ptr(), y.data_ptr(), n, k, temperature,
                          student_temperature, weight, ignore_index, _REDUCTIONS[reduction],
                          _common.address(loss if reduction == "none" else None), stats.data_ptr(),
                          _common.address(grad if student_grad else None), _common.threads())
    if reduction != "none":
        loss.fill_(total)
    return loss, stats, grad


def _kd_loss_fake(student_logits, teacher_logits, target, temperature, student_temperature, weight, reduction,
                  ignore_index, student_grad):
    return _outputs(student_logits, reduction, student_grad)


def _contiguous(s: torch.Tensor, t: torch.Tensor, target: torch.Tensor):
    return s.contiguous(), t.contiguous(), target.to(torch.int64).contiguous()


def _outputs(s: torch.Tensor, reduction: str, student_grad: bool):
    n = s.shape[0]
    loss = _alloc.empty((n,) if reduction == "none" else (), dtype=s.dtype, device=s.device)
    stats = _alloc.empty((n, _STATS), dtype=torch.float64, device=s.device)
    grad = _alloc.empty(s.shape if student_grad else (0,), dtype=s.dtype, device=s.device, like=s)
    return loss, stats, grad


def _kd_loss_teacher_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, stats: torch.Tensor,
                          temperature: float, student_temperature: float, weight: float,
                          reduction: str) -> torch.Tensor:
    """``dL/dt (N, K)`` under the reduction (per row ``dloss_i/dt_i`` for "none"), from ``kd_loss``'s stats."""
    s, t = student_logits.contiguous(), teacher_logits.contiguous()
    grad = _alloc.empty(s.shape, dtype=s.dtype, device=s.device)
    n, k = s.shape
    _C.kd_teacher_grad(_common.dtype_name(s), s.data_ptr(), t.data_ptr(), stats.data_ptr(), n, k, temperature,
                       student_temperature, weight, _REDUCTIONS[reduction], grad.data_ptr(), _common.threads())
    return grad


def _kd_loss_teacher_grad_fake(student_logits, teacher_logits, stats, temperature, student_temperature, weight,
                               reduction):
    return _alloc.empty(student_logits.shape, dtype=student_logits.dtype, device=student_logits.device)


kd_loss_teacher_grad = _common.fused_op("fitnets_fast_cpp::kd_loss_teacher_grad", _kd_loss_teacher_grad,
                                        _kd_loss_teacher_grad_fake)


def _setup_context(ctx, inputs, output):
    s, t, target, temperature, student_temperature, weight, reduction, ignore_index, _student_grad = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(s, t, output[1], output[2])
    ctx.args = (temperature, student_temperature, weight, reduction)


def _backward(ctx, grad_loss, _grad_stats, _grad_grad):
    s, t, stats, grad_s = ctx.saved_tensors
    reduction = ctx.args[3]
    scale = grad_loss.unsqueeze(1) if reduction == "none" else grad_loss
    student = teacher = None
    if ctx.needs_input_grad[0]:
        student = _scaled(grad_s, scale)
    if ctx.needs_input_grad[1]:
        teacher = kd_loss_teacher_grad(s, t, stats, *ctx.args) * scale
    return student, teacher, None, None, None, None, None, None, None


def _scaled(grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``grad * scale``; in eager mode the saved buffer itself when ``scale`` is a single 1 (``loss.backward()``),
    saving a pass over ``N * K`` values. The buffer is never written in place, so a retained graph's second
    backward sees it unchanged."""
    if not torch.compiler.is_compiling() and scale.numel() == 1 and scale.item() == 1:
        return grad
    return grad * scale


kd_loss_fused = _common.fused_op("fitnets_fast_cpp::kd_loss", _kd_loss, _kd_loss_fake, _setup_context, _backward,
                                 used_by="kd_loss")


def kd_loss_impl(student_logits, teacher_logits, target, temperature=3.0, lam=4.0, student_temperature=None,
                 soft_scale=1.0, reduction="mean", ignore_index=-100):
    """See ``fitnets_fast.reference.kd_loss``."""
    t_s = temperature if student_temperature is None else student_temperature
    student_grad = torch.is_grad_enabled() and student_logits.requires_grad
    return kd_loss_fused(student_logits, teacher_logits, target, float(temperature), float(t_s),
                         float(lam * soft_scale), reduction, int(ignore_index), student_grad)[0]
