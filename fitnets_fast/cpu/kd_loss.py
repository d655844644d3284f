"""Knowledge-distillation loss (FitNets stage 2) on the C++ kernel.

The forward makes one streaming pass per row (online softmax: any class count) and a second pass over the
cache-resident row that writes ``dL/ds`` under the reduction; the backward only scales it by the incoming
gradient. ``dL/dt`` (only when the teacher logits require grad) is computed in the backward from the
per-row softmax statistics the forward saved (``(N, 4)`` float64).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .. import _C, _alloc
from . import _common

_REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}


def _kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                  temperature: float, student_temperature: float, weight: float, reduction: str,
                  ignore_index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(N, K)`` logits, ``(N,)`` integer target; ``weight = lam * soft_scale``.

    Returns (loss: 0-dim, or ``(N,)`` for reduction "none"; ``dL/ds (N, K)``, per row ``dloss_i/ds_i`` for
    "none"; row statistics ``(N, 4)`` float64 for the teacher gradient).
    """
    s, t = student_logits.contiguous(), teacher_logits.contiguous()
    y = target.to(torch.int64).contiguous()
    loss, grad, stats = _outputs(s, reduction)
    n, k = s.shape
    total = _C.kd_forward(_common.dtype_name(s), s.data_ptr(), t.data_ptr(), y.data_ptr(), n, k, temperature,
                          student_temperature, weight, ignore_index, _REDUCTIONS[reduction],
                          loss.data_ptr() if reduction == "none" else 0, grad.data_ptr(), stats.data_ptr(),
                          _common.threads())
    if reduction != "none":
        loss.fill_(total)
    return loss, grad, stats


def _kd_loss_fake(student_logits, teacher_logits, target, temperature, student_temperature, weight, reduction,
                  ignore_index):
    return _outputs(student_logits, reduction)


def _outputs(s: torch.Tensor, reduction: str):
    n = s.shape[0]
    loss = _alloc.empty((n,) if reduction == "none" else (), dtype=s.dtype, device=s.device)
    grad = _alloc.empty(s.shape, dtype=s.dtype, device=s.device)
    stats = _alloc.empty((n, 4), dtype=torch.float64, device=s.device)
    return loss, grad, stats


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
    s, t, _target, temperature, student_temperature, weight, reduction, _ignore = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(s, t, output[1], output[2])
    ctx.args = (temperature, student_temperature, weight, reduction)


def _backward(ctx, grad_loss, _grad_grad, _grad_stats):
    s, t, grad_s, stats = ctx.saved_tensors
    reduction = ctx.args[3]
    scale = grad_loss.unsqueeze(1) if reduction == "none" else grad_loss
    grad_t = None
    if ctx.needs_input_grad[1]:
        grad_t = kd_loss_teacher_grad(s, t, stats, *ctx.args) * scale
    return (grad_s * scale if ctx.needs_input_grad[0] else None), grad_t, None, None, None, None, None, None


kd_loss_fused = _common.fused_op("fitnets_fast_cpu::kd_loss", _kd_loss, _kd_loss_fake, _setup_context, _backward)


def kd_loss_impl(student_logits, teacher_logits, target, temperature=3.0, lam=4.0, student_temperature=None,
                 soft_scale=1.0, reduction="mean", ignore_index=-100):
    """See ``fitnets_fast.reference.kd_loss``."""
    t_s = temperature if student_temperature is None else student_temperature
    return kd_loss_fused(student_logits, teacher_logits, target, float(temperature), float(t_s),
                         float(lam * soft_scale), reduction, int(ignore_index))[0]
