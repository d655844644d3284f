"""Eager calls of the fused ops without the custom-op dispatch.

Every fused op is a ``torch.library`` op (so ``torch.compile`` traces it), but calling such an op costs tens
of microseconds on the host (binding the arguments to the schema, filling defaults, the autograd wrapper):
more than a small kernel itself. ``dispatch`` returns a caller that uses the op while ``torch.compile``
traces (or on tensor subclasses such as fake tensors) and, in eager mode, runs the same functions directly,
through a plain ``torch.autograd.Function`` when the op has a backward.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["dispatch"]


def _autograd_function(name: str, forward: Callable, setup_context: Callable, backward: Callable) -> Callable:
    """``apply`` of a ``torch.autograd.Function`` running ``forward``, ``setup_context`` and ``backward``
    (the functions of ``register_autograd``). Output 0 must be the only differentiable output."""

    def function_forward(ctx, *args):
        # Only output 0 is differentiable: no zero-filled gradients for the others (saved buffers).
        ctx.set_materialize_grads(False)
        ctx.num_args = len(args)
        output = forward(*args)
        setup_context(ctx, args, output)
        return output

    def function_backward(ctx, *grads):
        return (None,) * ctx.num_args if grads[0] is None else backward(ctx, *grads)

    # ctx-style forward: Function.apply then skips binding the arguments with inspect (~50 us a call).
    function = type(f"{name}_function", (torch.autograd.Function,), {
        "forward": staticmethod(function_forward), "backward": staticmethod(function_backward)})
    return function.apply


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def dispatch(op, forward: Callable, setup_context: Optional[Callable] = None,
             backward: Optional[Callable] = None) -> Callable:
    """A caller of the registered ``op``: ``op(*args)`` while ``torch.compile`` traces or when a tensor
    argument is a subclass (fake tensors of ``make_fx`` / ``torch.export``, and the like), else ``forward``
    (with ``setup_context`` / ``backward`` as its autograd, when given) called directly. ``caller.op`` is
    ``op``."""
    eager = forward if backward is None else _autograd_function(forward.__name__, forward, setup_context, backward)

    def call(*args):
        if torch.compiler.is_compiling() or any(isinstance(a, torch.Tensor) and type(a) not in _PLAIN
                                                for a in args):
            return op(*args)
        return eager(*args)

    call.op = op
    call.__doc__ = forward.__doc__
    return call
