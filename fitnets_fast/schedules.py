"""Per-epoch schedules with pylearn2's semantics (the FitNets authors' code calls them once per epoch).

The counter ``c`` is the 1-based epoch index: pylearn2 calls ``on_monitor`` once before the first epoch,
so during epoch 1 the counter is 1 (the authors' lambda schedule counts the same way).
"""
from __future__ import annotations

__all__ = ["linear_decay", "linear_ramp", "exponential_decay", "step_decay"]


def _check_epoch(epoch: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"epoch must be a 1-based int >= 1, got {epoch!r}")
    return epoch


def linear_decay(epoch: int, initial: float, final: float, start: int, saturate: int) -> float:
    """The authors' linear decay (``TeacherDecayOverEpoch`` for lambda, pylearn2 ``LinearDecayOverEpoch``).

    ``initial`` for ``epoch < start``; ``initial - (initial - final) / (saturate - start + 1) * (epoch - start + 1)``
    for ``start <= epoch < saturate``; ``final`` for ``epoch >= saturate``; the result is clipped at >= 0.
    """
    _check_epoch(epoch)
    if saturate < start:
        raise ValueError(f"saturate must be >= start, got start={start}, saturate={saturate}")
    if epoch < start:
        value = initial
    elif epoch < saturate:
        value = initial - (initial - final) / (saturate - start + 1) * (epoch - start + 1)
    else:
        value = final
    return max(float(value), 0.0)


def linear_ramp(epoch: int, initial: float, final: float, start: int, saturate: int) -> float:
    """pylearn2 ``MomentumAdjustor``: ``alpha = clip((epoch - start) / (saturate - start), 0, 1)``,
    value ``initial * (1 - alpha) + final * alpha`` (a step at ``start`` when ``saturate == start``)."""
    _check_epoch(epoch)
    if saturate < start:
        raise ValueError(f"saturate must be >= start, got start={start}, saturate={saturate}")
    if saturate == start:
        return float(final if epoch >= start else initial)
    alpha = min(max((epoch - start) / (saturate - start), 0.0), 1.0)
    return float(initial * (1.0 - alpha) + final * alpha)


def exponential_decay(updates_done: int, initial: float, factor: float, minimum: float) -> float:
    """pylearn2 ``ExponentialDecay`` (per update): ``max(initial / factor ** updates_done, minimum)``."""
    if factor < 1.0:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return max(float(initial) / float(factor) ** updates_done, float(minimum))


def step_decay(epoch: int, initial: float, milestones, decay: float) -> float:
    """Step decay (RepDistiller's ``adjust_learning_rate``): ``initial * decay ** k`` with ``k`` the number of
    milestones strictly before ``epoch`` (so milestone 150 lowers the rate from epoch 151 on)."""
    _check_epoch(epoch)
    return float(initial) * float(decay) ** sum(epoch > m for m in milestones)
