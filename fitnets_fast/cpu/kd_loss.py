"""Knowledge-distillation loss (FitNets stage 2) on the C++ kernel.

The forward makes one streaming pass per row (online softmax: any class count) that saves the row's softmax
statistics (``(N, 6)`` float64) and writes nothing ``K``-wide; the backward makes one streaming pass that
writes ``dL/ds`` times the incoming gradient from them, and ``dL/dt`` (only when the teacher logits require
grad) another.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .. import _C, _alloc
from . import _common

_REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
_STATS = 6  # per-row statistics the kernels share (csrc/kd_loss.cpp: Stat)


def _kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             temperature: float, student_temperature: float, weight: float, reduction: str,
             ignore_index: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(N, K)`` logits, ``(N,)`` integer target; ``weight = lam * soft_scale``.

    Returns (loss: 0-dim, or ``(N,)`` for reduction "none"; row statistics ``(N, 6)`` float64 for the
    gradients).
    """
    s, t, y = _contiguous(student_logits, teacher_logits, target)
    loss, stats = _outputs(s, reduction)
    n, k = s.shape
    total = _C.kd_forward(_common.dtype_name(s), s.data_ptr(), t.data_ptr(), y.data_ptr(), n, k, temperature,
                          student_temperature, weight, ignore_index, _REDUCTIONS[reduction],
                          loss.data_ptr() if reduction == "none" else 0, stats.data_ptr(), _common.threads())
    if reduction != "none":
        loss.fill_(total)
    return loss, stats


def _kd_loss_fake(student_logits, teacher_logits, target, temperature, student_temperature, weight, reduction,
                  ignore_index):
    return _outputs(student_logits, reduction)


def _contiguous(s: torch.Tensor, t: torch.Tensor, target: torch.Tensor):
    return s.contiguous(), t.contiguous(), target.to(torch.int64).contiguous()


def _outputs(s: torch.Tensor, reduction: str):
    n = s.shape[0]
    loss = _alloc.empty((n,) if reduction == "none" else (), dtype=s.dtype, device=s.device)
    stats = _alloc.empty((n, _STATS), dtype=torch.float64, device=s.device)
    return loss, stats


def _kd_loss_student_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                          stats: torch.Tensor, grad_loss: torch.Tensor, temperature: float,
                          student_temperature: float, weight: float, reduction: str,
                          ignore_index: int) -> torch.Tensor:
    """``dL/ds (N, K)`` under the reduction times ``grad_loss`` (0-dim, or ``(N,)`` for "none"), from
    ``kd_loss``'s stats."""
    s, t, y = _contiguous(student_logits, teacher_logits, target)
    scale = grad_loss.to(s.dtype).contiguous()
    grad = _alloc.empty(s.shape, dtype=s.dtype, device=s.device)
    n, k = s.shape
    _C.kd_student_grad(_common.dtype_name(s), s.data_ptr(), t.data_ptr(), y.data_ptr(), stats.data_ptr(),
                       scale.data_ptr(), n, k, temperature, student_temperature, weight, ignore_index,
                       _REDUCTIONS[reduction], grad.data_ptr(), _common.threads())
    return grad


def _kd_loss_student_grad_fake(student_logits, teacher_logits, target, stats, grad_loss, temperature,
                               student_temperature, weight, reduction, ignore_index):
    return _alloc.empty(student_logits.shape, dtype=student_logits.dtype, device=student_logits.device)


kd_loss_student_grad = _common.fused_op("fitnets_fast_cpu::kd_loss_student_grad", _kd_loss_student_grad,
                                        _kd_loss_student_grad_fake)


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


kd_loss_teacher_grad = _common.fused_op("fitnets_fast_cpu::kd_loss_teacher_grad", _kd_loss_teacher_grad,
                                        _kd_loss_teacher_grad_fake)


def _setup_context(ctx, inputs, output):
    s, t, target, temperature, student_temperature, weight, reduction, ignore_index = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(s, t, target, output[1])
    ctx.args = (temperature, student_temperature, weight, reduction)
    ctx.ignore_index = ignore_index


def _backward(ctx, grad_loss, _grad_stats):
    s, t, target, stats = ctx.saved_tensors
    grad_s = grad_t = None
    if ctx.needs_input_grad[0]:
        grad_s = kd_loss_student_grad(s, t, target, stats, grad_loss, *ctx.args, ctx.ignore_index)
    if ctx.needs_input_grad[1]:
        reduction = ctx.args[3]
        scale = grad_loss.unsqueeze(1) if reduction == "none" else grad_loss
        grad_t = kd_loss_teacher_grad(s, t, stats, *ctx.args) * scale
    return grad_s, grad_t, None, None, None, None, None, None


kd_loss_fused = _common.fused_op("fitnets_fast_cpu::kd_loss", _kd_loss, _kd_loss_fake, _setup_context, _backward)


def kd_loss_impl(student_logits, teacher_logits, target, temperature=3.0, lam=4.0, student_temperature=None,
                 soft_scale=1.0, reduction="mean", ignore_index=-100):
    """See ``fitnets_fast.reference.kd_loss``."""
    t_s = temperature if student_temperature is None else student_temperature
    return kd_loss_fused(student_logits, teacher_logits, target, float(temperature), float(t_s),
                         float(lam * soft_scale), reduction, int(ignore_index))[0]
