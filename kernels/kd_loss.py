"""Fused knowledge-distillation loss (FitNets Eq. 2): loss and dL/d(student) in one pass over the logits.

Per row ``i`` (``s`` student, ``t`` teacher logits, ``y`` label, ``w = lam * soft_scale``)::

    hard_i = logsumexp(s_i) - s_i[y_i]                       (0 when y_i == ignore_index)
    soft_i = logsumexp(s_i / T_s) - sum_j p_ij * s_ij / T_s,  p_i = softmax(t_i / T)
    dhard/ds = softmax(s_i) - onehot(y_i)
    dsoft/ds = (softmax(s_i / T_s) - p_i) / T_s
    dsoft/dt = -(p_i / T) * (log_softmax(s_i / T_s) - sum_j p_ij log_softmax(s_i / T_s)_j)
             = -(p_i / (T T_s)) * ((s_i - c_i) - sum_j p_ij (s_ij - c_i))

Every exponential is taken of a difference to the row's maximum (s - max s, t - max t) before the
temperature scales it, so a large common offset of the logits costs no accuracy. ``c_i`` is s at the
teacher's largest logit: a sharp teacher puts nearly all of p there, and the sum is then a sum of small
terms, where a shift by max s would leave dL/dt at that class as mostly rounding error.

The forward kernel computes the loss (per row for ``reduction="none"``, else one partial sum per program,
already scaled by the reduction's coefficients) and writes dL/ds, and dL/dt when the teacher needs a
gradient, into their own buffers (never over the logits). The backward only multiplies those buffers by the
incoming gradient.

Two tilings, one kernel: a tile of ``rows`` rows x ``block_k`` columns. When ``block_k >= K`` the whole row
is in registers and many rows share a program (small class counts, where one row per program would be
launch-bound); otherwise the kernel loops over column blocks with an online softmax (pass 1: statistics,
pass 2: gradients). Accumulation is float32 (float64 for float64 inputs). Registered as the
``torch.library.triton_op`` ``fitnets_fast_triton::kd_loss`` (torch.compile-safe), autograd via
``register_autograd``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .. import _alloc
from .._checks import first_order_only
from ._common import acc_torch_dtype, f64_parts, from_parts, is_fp64, to_acc

_REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
_COUNT_BLOCK = 1024


class KDConfig(NamedTuple):
    """``rows`` rows per program, ``block_k`` columns per tile (>= K: single pass), ``num_warps``."""

    rows: int
    block_k: int
    num_warps: int = 4


def kd_config(n: int, k: int) -> KDConfig:
    """Heuristic tiling: whole rows in registers up to 4096 classes, packing rows up to 2048 elements a tile;
    beyond that one row per program and 4096-column blocks. Warps: one per 256 tile elements (4 to 16), i.e.
    at most 8 elements of each of the tile's live arrays per thread; at 16 per thread (a 2048-element tile on
    4 warps) ptxas spills."""
    block_k = triton.next_power_of_2(k) if k <= 4096 else 4096
    rows = max(1, min(triton.next_power_of_2(max(n, 1)), 2048 // block_k)) if k <= 4096 else 1
    return KDConfig(rows, block_k, min(16, max(4, rows * block_k // 256)))


def bytes_moved(n: int, k: int, itemsize: int, label_size: int, grad_student: bool, grad_teacher: bool,
                cfg: KDConfig) -> int:
    """Bytes one forward + backward of ``kd_loss_impl`` reads and writes in device memory (the model
    behind a bandwidth figure): the forward reads student and teacher once per pass over the row (two passes
    when a row spans column blocks and a gradient is wanted) and the labels, and writes each wanted gradient;
    the backward reads each gradient and writes it scaled by the incoming gradient."""
    logits = n * k * itemsize
    passes = 2 if cfg.block_k < k and (grad_student or grad_teacher) else 1
    grads = grad_student + grad_teacher
    return 2 * logits * passes + n * label_size + grads * logits + 2 * grads * logits


@triton.jit
def _row_grads(s, t, mask, cols, y, m1, z1, z2, mt, z3, c, mean_c, c_h, c_s, inv_ts, inv_t):
    """dL/ds and dL/dt for a [rows, block] tile (accumulator dtype) given the row statistics (see
    ``_kd_loss_kernel``); columns outside ``mask`` (read as -inf) give junk that is never stored."""
    onehot = (cols[None, :] == y[:, None]).to(s.dtype)
    d1 = s - m1[:, None]
    p = tl.exp((t - mt[:, None]) * inv_t) / z3[:, None]
    gs = c_h[:, None] * (tl.exp(d1) / z1[:, None] - onehot) + (c_s * inv_ts) * (tl.exp(d1 * inv_ts) / z2[:, None] - p)
    gt = (-c_s * inv_t * inv_ts) * p * tl.where(mask, (s - c[:, None]) - mean_c[:, None], 0.0)
    return gs, gt


@triton.jit
def _teacher_top(s, t, tile_cols):
    """Per row of a [rows, block] tile: (max of t, s at its first maximum); ``tile_cols`` = arange(block)."""
    top = tl.argmax(t, axis=1)
    return tl.max(t, axis=1), tl.sum(tl.where(tile_cols[None, :] == top[:, None], s, 0.0), axis=1)


@triton.jit
def _centre(top_s, m1, fallback):
    """The shift c: s at the teacher's largest logit (``top_s``) if finite, else max s (``m1``) if finite,
    else ``fallback``."""
    return tl.where(_finite(top_s), top_s, tl.where(_finite(m1), m1, fallback))


@triton.jit
def _finite(x):
    return (x == x) & (tl.abs(x) < float("inf"))


@triton.jit
def _kd_loss_kernel(s_ptr, t_ptr, y_ptr, out_ptr, gs_ptr, gt_ptr, N, K, inv_t0, inv_t1, inv_t2, inv_ts0, inv_ts1,
                    inv_ts2, w0, w1, w2, ignore_index,
                    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE: tl.constexpr, REDUCE: tl.constexpr,
                    GRAD_S: tl.constexpr, GRAD_T: tl.constexpr, FP64: tl.constexpr, COUNT_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < N
    # Rows past the end read the last row (valid numbers, no -inf arithmetic) and are never stored.
    base = tl.minimum(rows, N - 1).to(tl.int64) * K
    cols0 = tl.arange(0, BLOCK_K)
    zero = to_acc(tl.zeros((ROWS,), dtype=tl.float32), FP64)
    inv_t = from_parts(inv_t0, inv_t1, inv_t2, FP64)
    inv_ts = from_parts(inv_ts0, inv_ts1, inv_ts2, FP64)
    w_soft = from_parts(w0, w1, w2, FP64)

    # Reduction coefficients: hard term c_h (per row: 0 when unlabelled), soft term c_s.
    if REDUCE == 2:
        count = tl.zeros((COUNT_BLOCK,), dtype=tl.int32)
        for start in range(0, N, COUNT_BLOCK):
            idx = start + tl.arange(0, COUNT_BLOCK)
            lab = tl.load(y_ptr + idx, mask=idx < N, other=ignore_index)
            count += (lab != ignore_index).to(tl.int32)
        c_h_all = 1.0 / tl.maximum(tl.sum(count, axis=0), 1).to(zero.dtype)
        c_s = w_soft / N
    else:
        c_h_all = 1.0
        c_s = w_soft
    y = tl.load(y_ptr + tl.minimum(rows, N - 1)).to(tl.int32)
    labelled = y != ignore_index
    c_h = tl.where(labelled, zero + c_h_all, zero)
    y = tl.where(labelled, y, -1)
    s_y = to_acc(tl.load(s_ptr + base + tl.maximum(y, 0), mask=labelled, other=0.0), FP64)

    # Row statistics: m1 = max s, z1 = sum exp(s - m1), z2 = sum exp((s - m1) / T_s), mt = max t,
    # z3 = sum exp((t - mt) / T), c = s at the teacher's first maximum (_centre), a3 = sum exp((t - mt) / T)
    # (s - c).
    if SINGLE:
        mask = (cols0 < K)[None, :]
        s = to_acc(tl.load(s_ptr + base[:, None] + cols0[None, :], mask=mask, other=float("-inf")), FP64)
        t = to_acc(tl.load(t_ptr + base[:, None] + cols0[None, :], mask=mask, other=float("-inf")), FP64)
        m1 = tl.max(s, axis=1)
        d1 = s - m1[:, None]
        z1 = tl.sum(tl.exp(d1), axis=1)
        z2 = tl.sum(tl.exp(d1 * inv_ts), axis=1)
        mt, top_s = _teacher_top(s, t, cols0)
        c = _centre(top_s, m1, zero)
        e3 = tl.exp((t - mt[:, None]) * inv_t)
        z3 = tl.sum(e3, axis=1)
        a3 = tl.sum(e3 * tl.where(mask, s - c[:, None], 0.0), axis=1)
    else:
        m1 = zero + float("-inf")
        z1 = zero
        z2 = zero
        mt = zero + float("-inf")
        c = zero
        z3 = zero
        a3 = zero
        for start in range(0, K, BLOCK_K):
            cols = start + cols0
            mask = (cols < K)[None, :]
            s = to_acc(tl.load(s_ptr + base[:, None] + cols[None, :], mask=mask, other=float("-inf")), FP64)
            t = to_acc(tl.load(t_ptr + base[:, None] + cols[None, :], mask=mask, other=float("-inf")), FP64)
            new1 = tl.maximum(m1, tl.max(s, axis=1))
            z1 = z1 * tl.exp(m1 - new1) + tl.sum(tl.exp(s - new1[:, None]), axis=1)
            z2 = z2 * tl.exp((m1 - new1) * inv_ts) + tl.sum(tl.exp((s - new1[:, None]) * inv_ts), axis=1)
            m1 = new1
            # A new teacher maximum rescales the teacher sums and moves the centre c to its class.
            block_mt, block_top_s = _teacher_top(s, t, cols0)
            moved = block_mt > mt
            new_mt = tl.where(moved, block_mt, mt)
            new_c = tl.where(moved, _centre(block_top_s, m1, c), c)
            scale3 = tl.where(moved, tl.exp((mt - new_mt) * inv_t), 1.0)
            e3 = tl.exp((t - new_mt[:, None]) * inv_t)
            a3 = scale3 * (a3 + z3 * (c - new_c)) + tl.sum(e3 * tl.where(mask, s - new_c[:, None], 0.0), axis=1)
            z3 = z3 * scale3 + tl.sum(e3, axis=1)
            mt = new_mt
            c = new_c
    mean_c = a3 / z3  # sum_j p_j (s_j - c)
    soft = tl.log(z2) - (mean_c + (c - m1)) * inv_ts
    loss = c_h * (tl.log(z1) + (m1 - s_y)) + c_s * soft
    if REDUCE == 0:
        tl.store(out_ptr + rows, loss.to(out_ptr.dtype.element_ty), mask=row_ok)
    else:
        total = tl.sum(tl.where(row_ok, loss, 0.0), axis=0)
        tl.store(out_ptr + pid, total.to(out_ptr.dtype.element_ty))

    if GRAD_S or GRAD_T:
        out_ok = row_ok[:, None]
        if SINGLE:
            gs, gt = _row_grads(s, t, mask, cols0, y, m1, z1, z2, mt, z3, c, mean_c, c_h, c_s, inv_ts, inv_t)
            mask = out_ok & (cols0 < K)[None, :]
            if GRAD_S:
                tl.store(gs_ptr + base[:, None] + cols0[None, :], gs.to(gs_ptr.dtype.element_ty), mask=mask)
            if GRAD_T:
                tl.store(gt_ptr + base[:, None] + cols0[None, :], gt.to(gt_ptr.dtype.element_ty), mask=mask)
        else:
            for start in range(0, K, BLOCK_K):
                cols = start + cols0
                mask = (cols < K)[None, :]
                s = to_acc(tl.load(s_ptr + base[:, None] + cols[None, :], mask=mask, other=float("-inf")), FP64)
                t = to_acc(tl.load(t_ptr + base[:, None] + cols[None, :], mask=mask, other=float("-inf")), FP64)
                gs, gt = _row_grads(s, t, mask, cols, y, m1, z1, z2, mt, z3, c, mean_c, c_h, c_s, inv_ts,
                                    inv_t)
                if GRAD_S:
                    tl.store(gs_ptr + base[:, None] + cols[None, :], gs.to(gs_ptr.dtype.element_ty),
                             mask=out_ok & mask)
                if GRAD_T:
                    tl.store(gt_ptr + base[:, None] + cols[None, :], gt.to(gt_ptr.dtype.element_ty),
                             mask=out_ok & mask)


@triton_op("fitnets_fast_triton::kd_loss", mutates_args={})
def _kd_loss_op(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                temperature: float, student_temperature: float, weight: float, reduction: int, ignore_index: int,
                grad_student: bool, grad_teacher: bool, rows: int, block_k: int, num_warps: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss, dL/ds, dL/dt); a gradient not asked for is an empty tensor. ``reduction``: 0 none,
    1 sum, 2 mean. The gradients are for an incoming gradient of 1 (per row for "none")."""
    s, t = student_logits, teacher_logits
    n, k = s.shape
    dev, dt = s.device, s.dtype
    programs = triton.cdiv(n, rows)
    if reduction == 0:
        out = _alloc.empty((n,), dtype=dt, device=dev)
    elif programs == 1:
        out = _alloc.empty((1,), dtype=dt, device=dev)  # single launch: the kernel writes the loss itself
    else:
        out = _alloc.empty((programs,), dtype=acc_torch_dtype(dt), device=dev)
    gs = _alloc.empty((n, k) if grad_student else (0,), dtype=dt, device=dev)
    gt = _alloc.empty((n, k) if grad_teacher else (0,), dtype=dt, device=dev)
    wrap_triton(_kd_loss_kernel)[(programs,)](
        s, t, target, out, gs, gt, n, k, *f64_parts(1.0 / temperature), *f64_parts(1.0 / student_temperature),
        *f64_parts(weight), ignore_index,
        ROWS=rows, BLOCK_K=block_k, SINGLE=block_k >= k, REDUCE=reduction, GRAD_S=grad_student,
        GRAD_T=grad_teacher, FP64=is_fp64(dt), COUNT_BLOCK=_COUNT_BLOCK, num_warps=num_warps)
    if reduction != 0:
        out = out.sum().to(dt) if programs > 1 else out.reshape(())
    return out, gs, gt


def _setup(ctx, inputs, output):
    _, gs, gt = output
    ctx.save_for_backward(gs, gt)
    ctx.per_row = inputs[6] == 0
    ctx.mark_non_differentiable(gs, gt)


def _backward(ctx, grad_loss, _grad_gs, _grad_gt):
    first_order_only("kd_loss", "triton")
    gs, gt = ctx.saved_tensors
    g = grad_loss[:, None] if ctx.per_row else grad_loss
    return (gs * g if gs.numel() else None, gt * g if gt.numel() else None) + (None,) * 11


_kd_loss_op.register_autograd(_backward, setup_context=_setup)


def kd_loss_impl(student_logits, teacher_logits, target, temperature=3.0, lam=4.0, student_temperature=None,
                 soft_scale=1.0, reduction="mean", ignore_index=-100, *, config: Optional[KDConfig] = None):
    """The reference ``kd_loss_impl`` (same arguments and result) as one Triton launch (two for a reduced
    loss spread over several programs). ``config`` overrides the heuristic tiling (tests use it)."""
    n, k = student_logits.shape
    cfg = config or kd_config(n, k)
    grad_on = torch.is_grad_enabled()
    t_s = temperature if student_temperature is None else student_temperature
    loss, _, _ = _kd_loss_op(
        student_logits.contiguous(), teacher_logits.contiguous(), _labels(target), float(temperature),
        float(t_s), float(lam) * float(soft_scale), _REDUCTIONS[reduction], int(ignore_index),
        grad_on and student_logits.requires_grad, grad_on and teacher_logits.requires_grad,
        cfg.rows, cfg.block_k, cfg.num_warps)
    return loss


def _labels(target: torch.Tensor) -> torch.Tensor:
    """Contiguous int32/int64 labels (narrower integer types are widened so ``ignore_index`` compares)."""
    return (target if target.dtype in (torch.int32, torch.int64) else target.long()).contiguous()
