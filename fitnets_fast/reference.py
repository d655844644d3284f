"""Plain-PyTorch reference implementations: the executable spec of every fused op.

Each public function validates its arguments and then calls its ``*_impl`` twin, which assumes valid
arguments; the fused backends (``fitnets_fast.cpp``, ``fitnets_fast.kernels``) implement the same ``*_impl``
signatures and are tested against these functions in float64.

Conventions shared by all ops:

* Maxout groups channels consecutively along dim 1 (pylearn2's grouping): output channel ``j`` is the max
  of input channels ``j*pieces ... j*pieces + pieces - 1``.
* Ties between pieces: the lowest piece index wins, and receives the whole gradient (``torch.max`` over
  the piece dimension; ``tests/test_reference.py`` pins this down). NaN in any piece propagates to the
  output.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import _checks

__all__ = ["maxout", "maxout_conv2d", "maxout_linear", "hint_loss", "kd_loss"]


def unsupported(op: str, inputs: tuple) -> Optional[str]:
    """The backend interface of ``fitnets_fast._backend``: the reference runs every valid call (None)."""
    return None


# --------------------------------------------------------------------------------------------- maxout
def maxout(x: torch.Tensor, pieces: int) -> torch.Tensor:
    """Maxout over dim 1: ``(N, C*pieces, *rest) -> (N, C, *rest)``, channels grouped consecutively."""
    _checks.maxout_input(x, pieces)
    return maxout_impl(x, pieces)


def maxout_impl(x: torch.Tensor, pieces: int) -> torch.Tensor:
    if pieces == 1:
        return x
    return x.unflatten(1, (x.shape[1] // pieces, pieces)).max(dim=2).values


def maxout_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pieces: int,
                  stride: int = 1, padding: int = 0, pool: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Convolution followed by maxout, then optional max-pooling (pylearn2's maxout conv layer).

    Args:
        x: ``(N, C_in, H, W)``.
        weight: ``(C_out*pieces, C_in, kH, kW)``; rows ``j*pieces ... j*pieces+pieces-1`` are the pieces of
            output channel ``j``.
        bias: ``(C_out*pieces,)`` (tied: one per filter), ``(C_out*pieces, H_conv, W_conv)`` (untied: one
            per filter and convolution-output location, pylearn2's default ``tied_b=False``; ``H_conv``,
            ``W_conv`` are the pre-pooling sizes below) or None. Added before the maxout.
        pieces: number of linear pieces per output channel (1 = plain linear conv).
        stride, padding: as ``F.conv2d`` (ints; zero padding).
        pool: ``(size, stride)`` of a square max-pooling of the maxout output, ceil mode (cuda-convnet's
            geometry: windows that start inside the map, clipped at its edge), or None.

    Returns:
        ``(N, C_out, H_out, W_out)`` with ``H_out = (H + 2*padding - kH) // stride + 1`` before pooling and
        ``ceil((H_out - size) / pool_stride) + 1`` after (one less if the last window would start outside).
        Pooling ties go to the first pixel of the window, as in ``F.max_pool2d``.
    """
    _checks.maxout_conv2d_args(x, weight, bias, pieces, stride, padding, pool)
    return maxout_conv2d_impl(x, weight, bias, pieces, stride, padding, pool)


def maxout_conv2d_impl(x, weight, bias, pieces, stride=1, padding=0, pool=None):
    return max_pool_impl(maxout_impl(conv2d_impl(x, weight, bias, stride, padding), pieces), pool)


def conv2d_impl(x, weight, bias, stride=1, padding=0):
    """``F.conv2d`` taking a tied ``(C,)`` or an untied ``(C, H_conv, W_conv)`` bias (or None)."""
    if bias is not None and bias.dim() == 3:
        return F.conv2d(x, weight, None, stride, padding) + bias
    return F.conv2d(x, weight, bias, stride, padding)


def max_pool_impl(y: torch.Tensor, pool: Optional[Tuple[int, int]]) -> torch.Tensor:
    """``maxout_conv2d``'s pooling of its maxout output ``y`` (identity for ``pool=None``)."""
    return y if pool is None else F.max_pool2d(y, pool[0], pool[1], ceil_mode=True)


def pooled_size(size: int, pool: int, stride: int) -> int:
    """Length of a ``size``-long side after ``max_pool_impl`` with ``pool=(pool, stride)``: PyTorch's ceil-mode
    rule, cuda-convnet's ``ceil((size - pool) / stride) + 1`` unless the last window would start outside."""
    out = -(-(size - pool) // stride) + 1
    return out - 1 if (out - 1) * stride >= size else out


def maxout_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pieces: int) -> torch.Tensor:
    """Fully-connected layer followed by maxout.

    Args:
        x: ``(N, in_features)``.
        weight: ``(out_features*pieces, in_features)`` (rows grouped as in ``maxout_conv2d``).
        bias: ``(out_features*pieces,)`` or None.

    Returns:
        ``(N, out_features)``.
    """
    _checks.maxout_linear_args(x, weight, bias, pieces)
    return maxout_linear_impl(x, weight, bias, pieces)


def maxout_linear_impl(x, weight, bias, pieces):
    return maxout_impl(F.linear(x, weight, bias), pieces)


# ------------------------------------------------------------------------------------------ hint loss
def hint_loss(guided: torch.Tensor, hint: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
              pieces: Optional[int] = None, padding: int = 0, *, activation: str = "maxout") -> torch.Tensor:
    """FitNets hint loss (paper Eq. 3, as the authors' ``HintCost``), with its convolutional regressor.

    ``r = act(conv2d(guided, weight, bias, stride=1, padding=padding))`` and the loss is
    ``1/2 * sum over C*H*W of (hint - r)^2``, averaged over the batch (a scalar). ``act`` is the teacher hint
    layer's non-linearity:

    * ``"maxout"``: maxout over ``pieces`` consecutive channels (required, >= 1; 1 is a linear regressor);
    * ``"relu"``: ReLU (``pieces`` None or 1); its gradient at exactly 0 is 0, as ``torch.relu``'s;
    * ``"none"``: identity (``pieces`` None or 1).

    Args:
        guided: student guided-layer output ``(N, C_g, H_g, W_g)``, ``N >= 1`` (an empty batch is a ValueError).
        hint: teacher hint-layer output ``(N, C_h, H_h, W_h)``, equal in shape to the regressor output.
        weight: regressor weight ``(C_h*pieces, C_g, kH, kW)``; bias ``(C_h*pieces,)``, untied
            ``(C_h*pieces, H_h, W_h)`` or None (as ``maxout_conv2d``).
    """
    pieces = _checks.hint_loss_args(guided, hint, weight, bias, pieces, padding, activation)
    return hint_loss_impl(guided, hint, weight, bias, pieces, padding, activation)


def hint_loss_impl(guided, hint, weight, bias, pieces, padding=0, activation="maxout"):
    """``hint_loss`` on valid arguments; ``pieces`` is 1 for ``activation`` "relu" and "none"."""
    regressed = maxout_conv2d_impl(guided, weight, bias, pieces, 1, padding)
    if activation == "relu":
        regressed = torch.relu(regressed)
    return 0.5 * (hint - regressed).square().sum() / guided.shape[0]


# -------------------------------------------------------------------------------------------- KD loss
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
            temperature: float = 3.0, lam: float = 4.0, student_temperature: Optional[float] = None,
            soft_scale: float = 1.0, reduction: str = "mean", ignore_index: int = -100) -> torch.Tensor:
    """Knowledge-distillation loss of FitNets stage 2 (paper Eq. 2).

    ``loss_i = CE(y_i, softmax(s_i)) + lam * soft_scale * H(softmax(t_i / T), softmax(s_i / T_s))``

    Args:
        student_logits, teacher_logits: ``(N, K)`` pre-softmax activations, K >= 2.
        target: ``(N,)`` integer class indices in ``[0, K)``, or ``ignore_index``.
        temperature: T, softens the teacher (the paper uses 3).
        lam: weight of the soft term (the paper anneals it 4 -> 1).
        student_temperature: T_s. None means T_s = T (the paper's text); 1.0 reproduces the authors'
            released code, whose student is effectively not softened.
        soft_scale: extra factor on the soft term; 1 is FitNets, ``T*T`` is Hinton et al.'s scaling.
        reduction: "mean", "sum" or "none" (per-row losses, shape ``(N,)``).
        ignore_index: rows with this target get no hard term (their soft term still counts: the teacher
            needs no label). With "mean" the hard term is averaged over the labelled rows (0 if there are
            none) and the soft term over all rows.
    """
    _checks.kd_loss_args(student_logits, teacher_logits, target, temperature, lam, student_temperature,
                         soft_scale, reduction, ignore_index)
    return kd_loss_impl(student_logits, teacher_logits, target, temperature, lam, student_temperature,
                        soft_scale, reduction, ignore_index)


def kd_loss_impl(student_logits, teacher_logits, target, temperature=3.0, lam=4.0, student_temperature=None,
                 soft_scale=1.0, reduction="mean", ignore_index=-100):
    t_s = temperature if student_temperature is None else student_temperature
    target = target.long()
    hard = F.cross_entropy(student_logits, target, ignore_index=ignore_index, reduction="none")
    teacher_p = F.softmax(teacher_logits / temperature, dim=1)
    soft = -(teacher_p * F.log_softmax(student_logits / t_s, dim=1)).sum(dim=1)
    weight = lam * soft_scale
    if reduction == "none":
        return hard + weight * soft
    if reduction == "sum":
        return hard.sum() + weight * soft.sum()
    labelled = (target != ignore_index).sum().clamp_min(1)
    n = max(student_logits.shape[0], 1)
    return hard.sum() / labelled + weight * soft.sum() / n
