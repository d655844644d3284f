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

The forward kernel reads each row once: its statistics (online over column blocks when a row does not fit
one tile), the loss (per row for ``reduction="none"``, else one partial sum per program, already scaled by
the reduction's coefficients) and, when a gradient will be needed, the row's statistics (8 numbers). The
backward kernel reads each row once more, with those statistics, and writes the incoming gradient times
dL/ds (and dL/dt when the teacher needs one) straight into the gradient buffers: no gradient is held between
forward and backward, and nothing is read a third time to be scaled. Memory traffic of a forward + backward:
the logits twice, the gradients once (``bytes_moved``).

Tiles: ``rows`` rows x ``block_k`` columns. When ``block_k >= K`` the whole row is in registers and many rows
share a program (small class counts, where one row per program would be launch-bound); otherwise the
kernels loop over column blocks. Accumulation is float32 (float64 for float64 inputs). Registered as the
``torch.library.triton_op``s ``fitnets_fast_triton::kd_loss`` and ``kd_loss_grad`` (torch.compile-safe),
autograd via ``register_autograd``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .. import _alloc
from .._checks import first_order_only
from ._common import (acc_torch_dtype, cdiv, f64_parts, from_parts, fused_triton_op, is_fp64, next_power_of_2,
                      to_acc)

_REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
_COUNT_BLOCK = 1024


class KDConfig(NamedTuple):
    """``rows`` rows per program, ``block_k`` columns per tile (>= K: single pass), ``num_warps``."""

    rows: int
    block_k: int
    num_warps: int = 4


def kd_config(n: int, k: int, dtype: Optional[torch.dtype] = None) -> KDConfig:
    """Heuristic tiling: whole rows in registers up to 4096 classes, packing rows up to 2048 elements a tile;
    beyond that one row per program and 4096-column blocks. Warps: one per 256 tile elements (4 to 16), i.e.
    at most 8 elements of each of the tile's live arrays per thread; at 16 per thread (a 2048-element tile on
    4 warps) ptxas spills. float64 values take two registers each, and more warps only lower the registers a
    thread may have (128 at 16 warps): float64 tiles hold at most 1024 elements, on one warp per 128."""
    fp64 = dtype is not None and is_fp64(dtype)
    widest, pack, per_warp = (1024, 1024, 128) if fp64 else (4096, 2048, 256)
    block_k = next_power_of_2(k) if k <= widest else widest
    rows = max(1, min(next_power_of_2(max(n, 1)), pack // block_k)) if k <= widest else 1
    return KDConfig(rows, block_k, min(16, max(4, rows * block_k // per_warp)))


def bytes_moved(n: int, k: int, itemsize: int, label_size: int, grad_student: bool, grad_teacher: bool,
                cfg: KDConfig) -> int:
    """Bytes one forward (+ backward, when a gradient is wanted) of ``kd_loss_impl`` reads and writes in
    device memory (the model behind a bandwidth figure): the forward reads student and teacher once and the
    labels; the backward reads them again with the labels and writes each wanted gradient. The row
    statistics (8 numbers a row) and the loss are left out. ``cfg`` does not change the count (every tiling
    reads a row once per kernel)."""
    logits = n * k * itemsize
    grads = grad_student + grad_teacher
    if not grads:
        return 2 * logits + n * label_size
    return 4 * logits + 2 * n * label_size + grads * logits


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


# Per-row statistics saved by the forward for the backward, in this order (see _kd_loss_kernel).
_STATS = 8


@triton.jit
def _kd_loss_kernel(s_ptr, t_ptr, y_ptr, out_ptr, stats_ptr, N, K, inv_t0, inv_t1, inv_t2, inv_ts0, inv_ts1,
                    inv_ts2, w0, w1, w2, ignore_index,
                    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE: tl.constexpr, REDUCE: tl.constexpr,
                    SAVE_STATS: tl.constexpr, FP64: tl.constexpr, COUNT_BLOCK: tl.constexpr):
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
    else:
        c_h_all = 1.0
    c_s = _soft_coefficient(w_soft, N, REDUCE)
    y = tl.load(y_ptr + tl.minimum(rows, N - 1)).to(tl.int32)
    labelled = y != ignore_index
    c_h = tl.where(labelled, zero + c_h_all, zero)
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
    if SAVE_STATS:
        at = stats_ptr + rows.to(tl.int64) * 8
        tl.store(at + 0, m1, mask=row_ok)
        tl.store(at + 1, z1, mask=row_ok)
        tl.store(at + 2, z2, mask=row_ok)
        tl.store(at + 3, mt, mask=row_ok)
        tl.store(at + 4, z3, mask=row_ok)
        tl.store(at + 5, c, mask=row_ok)
        tl.store(at + 6, mean_c, mask=row_ok)
        tl.store(at + 7, c_h, mask=row_ok)


@triton.jit
def _soft_coefficient(w_soft, N, REDUCE: tl.constexpr):
    """The soft term's coefficient: ``lam * soft_scale``, divided by the batch for the mean."""
    if REDUCE == 2:
        return w_soft / N
    else:
        return w_soft


@triton.jit
def _kd_grad_kernel(s_ptr, t_ptr, y_ptr, stats_ptr, g_ptr, gs_ptr, gt_ptr, N, K, inv_t0, inv_t1, inv_t2, inv_ts0,
                    inv_ts1, inv_ts2, w0, w1, w2, ignore_index,
                    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, REDUCE: tl.constexpr, GRAD_S: tl.constexpr,
                    GRAD_T: tl.constexpr, FP64: tl.constexpr):
    """g * dL/ds and g * dL/dt from the logits and the forward's row statistics, one pass over each row; g is
    the incoming gradient (one per row for ``reduction="none"``)."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < N
    last = tl.minimum(rows, N - 1)
    base = last.to(tl.int64) * K
    cols0 = tl.arange(0, BLOCK_K)
    inv_t = from_parts(inv_t0, inv_t1, inv_t2, FP64)
    inv_ts = from_parts(inv_ts0, inv_ts1, inv_ts2, FP64)
    c_s = _soft_coefficient(from_parts(w0, w1, w2, FP64), N, REDUCE)
    at = stats_ptr + last.to(tl.int64) * 8
    m1, z1, z2 = tl.load(at + 0), tl.load(at + 1), tl.load(at + 2)
    mt, z3, c = tl.load(at + 3), tl.load(at + 4), tl.load(at + 5)
    mean_c, c_h = tl.load(at + 6), tl.load(at + 7)
    y = tl.load(y_ptr + last).to(tl.int32)
    y = tl.where(y != ignore_index, y, -1)
    if REDUCE == 0:
        g = to_acc(tl.load(g_ptr + last), FP64)[:, None]
    else:
        g = to_acc(tl.load(g_ptr), FP64)
    out_ok = row_ok[:, None]
    for start in range(0, K, BLOCK_K):
        cols = start + cols0
        mask = (cols < K)[None, :]
        s = to_acc(tl.load(s_ptr + base[:, None] + cols[None, :], mask=mask, other=float("-inf")), FP64)
        t = to_acc(tl.load(t_ptr + base[:, None] + cols[None, :], mask=mask, other=float("-inf")), FP64)
        gs, gt = _row_grads(s, t, mask, cols, y, m1, z1, z2, mt, z3, c, mean_c, c_h, c_s, inv_ts, inv_t)
        if GRAD_S:
            tl.store(gs_ptr + base[:, None] + cols[None, :], (g * gs).to(gs_ptr.dtype.element_ty), mask=out_ok & mask)
        if GRAD_T:
            tl.store(gt_ptr + base[:, None] + cols[None, :], (g * gt).to(gt_ptr.dtype.element_ty), mask=out_ok & mask)


def _scalars(temperature: float, student_temperature: float, weight: float) -> tuple:
    """The kernels' float arguments: 1/T, 1/T_s and the soft weight, each as three float32 parts."""
    return *f64_parts(1.0 / temperature), *f64_parts(1.0 / student_temperature), *f64_parts(weight)


def _kd_loss_forward(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                temperature: float, student_temperature: float, weight: float, reduction: int, ignore_index: int,
                save_stats: bool, rows: int, block_k: int, num_warps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (loss, row statistics ``(N, 8)`` in the accumulator dtype, or an empty tensor when not
    ``save_stats``). ``reduction``: 0 none, 1 sum, 2 mean."""
    s, t = student_logits, teacher_logits
    n, k = s.shape
    dev, dt = s.device, s.dtype
    programs = cdiv(n, rows)
    if reduction == 0:
        out = _alloc.empty((n,), dtype=dt, device=dev)
    elif programs == 1:
        out = _alloc.empty((1,), dtype=dt, device=dev)  # single launch: the kernel writes the loss itself
    else:
        out = _alloc.empty((programs,), dtype=acc_torch_dtype(dt), device=dev)
    stats = _alloc.empty((n, _STATS) if save_stats else (0,), dtype=acc_torch_dtype(dt), device=dev)
    wrap_triton(_kd_loss_kernel)[(programs,)](
        s, t, target, out, stats, n, k, *_scalars(temperature, student_temperature, weight), ignore_index,
        ROWS=rows, BLOCK_K=block_k, SINGLE=block_k >= k, REDUCE=reduction, SAVE_STATS=save_stats,
        FP64=is_fp64(dt), COUNT_BLOCK=_COUNT_BLOCK, num_warps=num_warps)
    if reduction != 0:
        out = out.sum().to(dt) if programs > 1 else out.reshape(())
    return out, stats


def _kd_loss_grad_forward(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                     stats: torch.Tensor, grad_loss: torch.Tensor, temperature: float, student_temperature: float,
                     weight: float, reduction: int, ignore_index: int, grad_student: bool, grad_teacher: bool,
                     rows: int, block_k: int, num_warps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_loss * dL/ds, grad_loss * dL/dt); a gradient not asked for is an empty tensor. ``grad_loss``: a
    scalar, or one value per row for ``reduction`` 0."""
    s, t = student_logits, teacher_logits
    n, k = s.shape
    gs = _alloc.empty((n, k) if grad_student else (0,), dtype=s.dtype, device=s.device)
    gt = _alloc.empty((n, k) if grad_teacher else (0,), dtype=s.dtype, device=s.device)
    wrap_triton(_kd_grad_kernel)[(cdiv(n, rows),)](
        s, t, target, stats, grad_loss.contiguous(), gs, gt, n, k,
        *_scalars(temperature, student_temperature, weight), ignore_index,
        ROWS=rows, BLOCK_K=block_k, REDUCE=reduction, GRAD_S=grad_student, GRAD_T=grad_teacher,
        FP64=is_fp64(s.dtype), num_warps=num_warps)
    return gs, gt


_kd_loss_grad_op = fused_triton_op("fitnets_fast_triton::kd_loss_grad", _kd_loss_grad_forward)


def _setup(ctx, inputs, output):
    s, t, target = inputs[:3]
    ctx.save_for_backward(s, t, target, output[1])
    ctx.args = inputs[3:8]             # temperature, student_temperature, weight, reduction, ignore_index
    ctx.tiles = inputs[9:]             # rows, block_k, num_warps
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, _grad_stats):
    first_order_only("kd_loss", "triton")
    s, t, target, stats = ctx.saved_tensors
    need_s, need_t = ctx.needs_input_grad[:2]
    gs, gt = _kd_loss_grad_op(s, t, target, stats, grad_loss, *ctx.args, need_s, need_t, *ctx.tiles)
    return (gs if need_s else None, gt if need_t else None) + (None,) * 10


_kd_loss_op = fused_triton_op("fitnets_fast_triton::kd_loss", _kd_loss_forward, _setup, _backward)


def kd_loss_impl(student_logits, teacher_logits, target, temperature=3.0, lam=4.0, student_temperature=None,
                 soft_scale=1.0, reduction="mean", ignore_index=-100, *, config: Optional[KDConfig] = None):
    """The reference ``kd_loss_impl`` (same arguments and result): one Triton launch forward (plus a sum for
    a reduced loss spread over several programs), one backward. ``config`` overrides the heuristic tiling
    (tests use it)."""
    n, k = student_logits.shape
    cfg = config or kd_config(n, k, student_logits.dtype)
    needs_grad = torch.is_grad_enabled() and (student_logits.requires_grad or teacher_logits.requires_grad)
    t_s = temperature if student_temperature is None else student_temperature
    loss, _ = _kd_loss_op(
        student_logits.contiguous(), teacher_logits.contiguous(), _labels(target), float(temperature),
        float(t_s), float(lam) * float(soft_scale), _REDUCTIONS[reduction], int(ignore_index), needs_grad,
        cfg.rows, cfg.block_k, cfg.num_warps)
    return loss


def _labels(target: torch.Tensor) -> torch.Tensor:
    """Contiguous int32/int64 labels (narrower integer types are widened so ``ignore_index`` compares)."""
    return (target if target.dtype in (torch.int32, torch.int64) else target.long()).contiguous()
