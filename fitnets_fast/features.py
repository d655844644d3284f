"""Intermediate features of any ``nn.Module``, taken by forward hooks on named modules.

A layer is named by its path in ``model.named_modules()`` (``"layer2.1"``, ``"features.3"``); for a
``MaxoutNet`` an int ``i`` (or a layer name such as ``"h3"``) still means ``layers[i]``. ``resolve`` turns
either into a path and raises ``ValueError`` listing the closest names when there is no such module.

``forward_to(model, path, x)`` runs ``model(x)`` and returns the output of the module at ``path``; the
forward stops right after that module has run (a hook raises an internal exception that ends the call), so
nothing above it is computed. ``Tap`` keeps the output of a module while the whole forward runs (the
one-stage recipe reads the guided map beside the logits).
"""
from __future__ import annotations

import difflib
from typing import List, Optional, Union

import torch
import torch.nn as nn

__all__ = ["resolve", "module_at", "forward_to", "Tap", "output_shape", "modules_before"]


def _paths(model: nn.Module) -> List[str]:
    return [name for name, _ in model.named_modules() if name]


def resolve(model: nn.Module, name: Union[int, str], role: str = "model") -> str:
    """The ``named_modules()`` path of ``name`` in ``model``: a path as is, or, for a model with a
    ``layers`` list (``MaxoutNet``), an int index (negative counting from the end) or a ``layer_names``
    entry. Raises ``ValueError`` naming the closest paths when ``model`` has no such module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"the {role} must be an nn.Module, got {type(model).__name__}")
    layers = getattr(model, "layers", None)
    if isinstance(name, int) and not isinstance(name, bool):
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"an int layer index needs a model with a 'layers' list; name the {role}'s module "
                             f"by its path instead (e.g. {', '.join(_paths(model)[:5])})")
        n = len(layers)
        if not -n <= name < n:
            raise ValueError(f"layer index {name} is out of range for the {role}'s {n} layers")
        return f"layers.{name % n}"
    if not isinstance(name, str):
        raise TypeError(f"a layer is named by a str path (or an int for MaxoutNet), got {type(name).__name__}")
    names = getattr(model, "layer_names", None)
    if isinstance(layers, nn.ModuleList) and isinstance(names, list) and name in names:
        return f"layers.{names.index(name)}"
    paths = _paths(model)
    if name in paths:
        return name
    close = difflib.get_close_matches(name, paths, n=6, cutoff=0.4) or paths[:6]
    raise ValueError(f"the {role} has no module named {name!r}; closest names: {', '.join(close)} "
                     f"({len(paths)} modules in all; see model.named_modules())")


def module_at(model: nn.Module, name: Union[int, str], role: str = "model") -> nn.Module:
    """The module that ``resolve(model, name)`` names."""
    return model.get_submodule(resolve(model, name, role))


class _Stop(Exception):
    """Raised by a stopping hook once the wanted module has run."""


class Tap:
    """Keeps the output of the module at ``path`` of ``model`` from each forward (``value``); with
    ``stop=True`` the forward ends right after that module. ``remove()`` takes the hook off."""

    def __init__(self, model: nn.Module, path: str, *, stop: bool = False):
        self.value: Optional[torch.Tensor] = None
        self.stop = stop
        self._handle = model.get_submodule(path).register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.value = output
        if self.stop:
            raise _Stop

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "Tap":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def forward_to(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """Output of the module at ``path`` (a ``resolve``d path) for ``model(x)``; the modules that would run
    after it do not run. Raises ``RuntimeError`` when ``model(x)`` returns without running that module."""
    with Tap(model, path, stop=True) as tap:
        try:
            model(x)
        except _Stop:
            return tap.value
    raise RuntimeError(f"the forward of {type(model).__name__} never ran its module {path!r}")


def _probe(model: nn.Module, run):
    """``run()`` with ``model`` in eval mode (no BatchNorm statistics change), without gradients and with the
    global RNG state restored afterwards (dropout draws do not shift the run's random stream)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return run()
    finally:
        model.train(was)


def output_shape(model: nn.Module, path: str, example: torch.Tensor) -> tuple:
    """Shape (batch excluded) of the module at ``path``'s output for the example batch ``example``."""
    return tuple(_probe(model, lambda: forward_to(model, path, example)).shape[1:])


def modules_before(model: nn.Module, path: str, example: torch.Tensor) -> List[nn.Module]:
    """The modules owning parameters (directly) that run in ``forward_to(model, path, example)``, in the
    order they first run: the part of ``model`` that a loss on that module's output trains."""
    ran: List[nn.Module] = []
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_pre_hook(lambda m, i: None if any(r is m for r in ran) else ran.append(m))
               for m in owners]
    try:
        _probe(model, lambda: forward_to(model, path, example))
    finally:
        for h in handles:
            h.remove()
    return ran
