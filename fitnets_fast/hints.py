"""``suggest_hints``: candidate (hint, guided) layer pairs for FitNets between any teacher and student.

One forward pass of a zero batch through each network, with forward hooks, records the output shape of every
candidate module and where it sits. A module (not the network itself) is a candidate when it runs exactly once,
returns a 4-D map ``(N, C, H, W)`` and is either

* a block: a module with submodules, at least one of which is a non-linearity (a ResNet block or stage, a
  ``nn.Sequential`` of conv + ReLU layers), or
* a non-linearity (an activation module, or one of our maxout conv layers: conv + maxout + pooling) or a
  pooling module, held directly by the network or by a container (``nn.Sequential``, ``nn.ModuleList``): the
  layers of a plain network. Activations inside a block are not candidates (the block is).

When several candidates return the same tensor (a stage and its last block), the outermost is kept.

Depth: the fraction of the network's weight layers (modules with parameters of their own, normalisation layers
excepted) that have run when the candidate's output is ready.

Regressor: the paper's, a valid convolution from the student's guided map to the teacher's hint map with kernel
``N_g - N_h + 1`` per spatial dimension, with the hint layer's maxout pieces when the hint module is a maxout
layer (else 1). Its weights are ``C_g * C_h * k_h * k_w * pieces`` (biases excluded) and its multiplications
per example the weights times ``H_h * W_h``. A teacher map larger than the student's gets no paper regressor.

Order (the paper's guidance: hint in the teacher's middle, guided in the student's middle, a small regressor):
pairs with a paper regressor first, then by the score ``|d_h - 1/2| + |d_g - 1/2| + w / W_s + L/4``, where
``d`` is the depth fraction, ``w`` the regressor's weights, ``W_s`` the student's parameters, and ``L`` the
number of nesting levels the two modules lie below the coarsest candidates of their networks (whole stages are
preferred to the blocks inside them).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from . import models
from .nn import MaxoutConv2d

__all__ = ["HintPair", "Candidate", "candidates", "suggest_hints", "format_hints", "load_network"]

Shape = Tuple[int, int, int]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, MaxoutConv2d)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_LEVEL_WEIGHT = 0.25


@dataclass(frozen=True)
class Candidate:
    """One candidate module of a network: ``path`` (as in ``named_modules()``), output ``shape`` ``(C, H, W)``,
    ``depth`` (fraction of the weight layers run, in (0, 1]), ``level`` (nesting levels below the network's
    coarsest candidate) and ``pieces`` (maxout pieces of a maxout layer, else 1)."""

    path: str
    shape: Shape
    depth: float
    level: int
    pieces: int


@dataclass(frozen=True)
class HintPair:
    """A (hint, guided) pair: the teacher's ``hint`` and the student's ``guided`` candidates; ``kernel``
    ``(k_h, k_w)`` of the paper's regressor (None when the teacher map is larger than the student's), its
    ``regressor_weights`` and ``regressor_mults`` per example (None likewise), and the ranking ``score`` (lower
    is better; see the module doc)."""

    hint: Candidate
    guided: Candidate
    kernel: Optional[Tuple[int, int]]
    regressor_weights: Optional[int]
    regressor_mults: Optional[int]
    score: float


def load_network(model: Union[str, os.PathLike, nn.Module]) -> nn.Module:
    """``model`` as a network: an ``nn.Module`` as is, a ``models.build`` name, or a model file written by a
    run (``models/<row>.pt``; only its architecture is used)."""
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, str) and model in models.names():
        return models.build(model)
    if isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            raise ValueError(f"{os.fspath(model)!r} is neither a model name ({', '.join(models.names())}) "
                             f"nor a model file")
        from .run_files import load_model_file

        info = load_model_file(model)
        return models.build(info["model"], info["num_classes"], **info["options"])
    raise TypeError(f"model must be an nn.Module, a model name or a model file path, got {type(model).__name__}")


def _input_shape(nets: Sequence[nn.Module], input_shape) -> Shape:
    if input_shape is None:
        shapes = {tuple(n.input_shape) for n in nets if getattr(n, "input_shape", None) is not None}
        if len(shapes) != 1:
            raise ValueError("input_shape (C, H, W) is required: the networks do not declare one input shape "
                             f"(they declare {sorted(shapes) or 'none'})")
        input_shape = shapes.pop()
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in input_shape)):
        raise ValueError(f"input_shape must be a (C, H, W) tuple of positive ints, got {input_shape!r}")
    return tuple(input_shape)


def _is_weight_layer(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) and not isinstance(m, _NORMS)


def candidates(net: nn.Module, input_shape: Shape) -> List[Candidate]:
    """The candidate modules of ``net`` (see the module doc) in the order they run, for inputs of shape
    ``(C, H, W)``. The net runs once in eval mode on a zero batch of one (its training mode is restored)."""
    named = dict(net.named_modules())
    parents: Dict[str, nn.Module] = {p: named[p.rpartition(".")[0]] for p in named if p}
    has_nonlinearity = {p: any(isinstance(s, _ACTIVATIONS) for s in m.modules()) for p, m in named.items()}
    calls: Dict[str, int] = {}
    seen: List[Tuple[str, torch.Tensor, int]] = []     # (path, output, weight layers run so far), in run order
    weight_layers = [0]

    def hook(path, module, _inputs, output):
        calls[path] = calls.get(path, 0) + 1
        if _is_weight_layer(module):
            weight_layers[0] += 1
        is_block = any(True for _ in module.children()) and has_nonlinearity[path]
        is_layer = (isinstance(module, _ACTIVATIONS + _POOLS)
                    and (parents[path] is net or isinstance(parents[path], (nn.Sequential, nn.ModuleList))))
        if (is_block or is_layer) and isinstance(output, torch.Tensor) and output.dim() == 4:
            seen.append((path, output, weight_layers[0]))

    handles = [m.register_forward_hook(lambda mod, i, o, p=p: hook(p, mod, i, o)) for p, m in named.items() if p]
    param = next(net.parameters(), None)
    x = torch.zeros((1,) + tuple(input_shape), dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(x)
    except RuntimeError as exc:
        raise ValueError(f"{type(net).__name__} does not run on inputs of shape {tuple(input_shape)}: {exc}") from exc
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    if weight_layers[0] == 0:
        raise ValueError("the network ran no layer with weights; nothing to place hints in")
    kept: Dict[int, Tuple[str, torch.Tensor, int]] = {}
    for entry in seen:                               # blocks finish after their insides: the outermost comes last
        if calls[entry[0]] == 1:
            kept[id(entry[1])] = entry
    order = [t for t in seen if kept.get(id(t[1])) is t]
    if not order:
        raise ValueError("the network has no candidate module (a block or layer returning an (N, C, H, W) map)")
    top = min(p.count(".") for p, _, _ in order)
    return [Candidate(p, tuple(out.shape[1:]), done / weight_layers[0], p.count(".") - top,
                      named[p].pieces if isinstance(named[p], MaxoutConv2d) else 1)
            for p, out, done in order]


def _pair(hint: Candidate, guided: Candidate, student_params: int) -> HintPair:
    (ch, hh, wh), (cg, hg, wg) = hint.shape, guided.shape
    centre = abs(hint.depth - 0.5) + abs(guided.depth - 0.5) + _LEVEL_WEIGHT * (hint.level + guided.level)
    if hh > hg or wh > wg:
        return HintPair(hint, guided, None, None, None, centre)
    kernel = (hg - hh + 1, wg - wh + 1)
    weights = cg * ch * kernel[0] * kernel[1] * hint.pieces
    return HintPair(hint, guided, kernel, weights, weights * hh * wh, centre + weights / student_params)


def suggest_hints(teacher: Union[str, os.PathLike, nn.Module], student: Union[str, os.PathLike, nn.Module],
                  input_shape: Optional[Sequence[int]] = None, top: int = 10) -> List[HintPair]:
    """The ``top`` best (hint, guided) pairs between ``teacher`` and ``student``, best first (see the module
    doc for the candidates, the regressor and the order).

    ``teacher`` / ``student``: an ``nn.Module``, a ``models.build`` name or a run's model file.
    ``input_shape``: ``(C, H, W)`` of one input; None takes the networks' ``input_shape`` attribute.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    t, s = load_network(teacher), load_network(student)
    shape = _input_shape([t, s], input_shape)
    student_params = sum(p.numel() for p in s.parameters())
    hints = candidates(t, shape)
    pairs = [_pair(h, g, student_params) for g in candidates(s, shape) for h in hints]
    pairs.sort(key=lambda p: (p.kernel is None, p.score))
    return pairs[:top]


def format_hints(pairs: Sequence[HintPair]) -> str:
    """``pairs`` as a text table, one row per pair in the given order."""
    head = ("#", "hint (teacher)", "shape", "depth", "guided (student)", "shape", "depth", "regressor kernel",
            "weights", "mults", "score")
    rows = [head]
    for i, p in enumerate(pairs, 1):
        kernel = "none (teacher map larger)" if p.kernel is None else f"{p.kernel[0]}x{p.kernel[1]}" + (
            f" maxout {p.hint.pieces}" if p.hint.pieces > 1 else "")
        rows.append((str(i), p.hint.path, "x".join(map(str, p.hint.shape)), f"{p.hint.depth:.2f}",
                     p.guided.path, "x".join(map(str, p.guided.shape)), f"{p.guided.depth:.2f}", kernel,
                     "-" if p.regressor_weights is None else f"{p.regressor_weights:,}",
                     "-" if p.regressor_mults is None else f"{p.regressor_mults:,}", f"{p.score:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
