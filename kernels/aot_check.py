"""Compile every Triton kernel for a CUDA architecture without a GPU (``python -m fitnets_fast.kernels.aot_check``).

The interpreter (``TRITON_INTERPRET=1``, how CI runs the kernels) executes kernels as NumPy and so misses
what only the real compiler rejects (type mismatches in loop-carried values, unsupported ``tl.dot`` operand
types, register or shared-memory limits). This tool runs the ops' host wrappers forward and backward on CPU
tensors with every kernel launch intercepted, then compiles each recorded launch (same arguments, same
constexprs) through Triton's full pipeline down to a cubin for the target (default sm_90, the H100). It needs
only Triton's bundled ``ptxas``, and must run without ``TRITON_INTERPRET`` (it refuses otherwise). Then it
traces the ops as torch.compile would (``trace_check``: Dynamo export and fake-tensor forward + backward).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Callable, Iterator, List

import torch

_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16",
          torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.uint8: "u8"}


class _Launch:
    """One intercepted ``kernel[grid](*args, **kwargs)``."""

    def __init__(self, kernel, args, kwargs):
        self.kernel, self.args, self.kwargs = kernel, args, dict(kwargs)

    def signature(self):
        names = self.kernel.arg_names
        options = {k: self.kwargs.pop(k) for k in ("num_warps", "num_stages") if k in self.kwargs}
        sig, constexprs = {}, {}
        values = dict(zip(names, self.args), **self.kwargs)
        for i, name in enumerate(names):
            value = values[name]
            if name in self.kwargs:
                sig[name] = "constexpr"
                constexprs[(i,)] = value
            elif isinstance(value, torch.Tensor):
                sig[name] = "*" + _TYPES[value.dtype]
            elif isinstance(value, bool):
                sig[name] = "i1"
            elif isinstance(value, int):
                sig[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
            elif isinstance(value, float):
                sig[name] = "fp32"
            else:
                raise TypeError(f"{name}: cannot type {type(value).__name__} for the signature")
        return sig, constexprs, options

    def describe(self) -> str:
        consts = ", ".join(f"{k}={v}" for k, v in self.kwargs.items() if k not in ("num_warps", "num_stages"))
        return f"{self.kernel.fn.__name__}({consts})"


@contextlib.contextmanager
def record_launches() -> Iterator[List[_Launch]]:
    """Within the block, every ``wrap_triton(kernel)[grid](...)`` of fitnets_fast.kernels is recorded, not run."""
    from . import hint_loss, kd_loss, maxout, maxout_conv

    launches: List[_Launch] = []

    def fake_wrap(kernel):
        class _Grid:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: launches.append(_Launch(kernel, args, kwargs))

        return _Grid()

    modules = (hint_loss, kd_loss, maxout, maxout_conv)
    saved = [m.wrap_triton for m in modules]
    for m in modules:
        m.wrap_triton = fake_wrap
    try:
        yield launches
    finally:
        for m, w in zip(modules, saved):
            m.wrap_triton = w


def _workloads(dtype: torch.dtype) -> List[Callable[[], None]]:
    """Forward + backward calls covering every kernel and tiling regime (FitNet-like shapes)."""
    from . import hint_loss_impl, kd_loss_impl, maxout_conv2d_impl, maxout_impl, maxout_linear_impl
    from ._common import GemmConfig

    def t(*shape, grad=True, dt=dtype):
        return torch.randn(*shape, dtype=dt).requires_grad_(grad)

    def backward(out):
        out.sum().backward()

    y = torch.randint(0, 100, (64,))
    return [
        lambda: backward(kd_loss_impl(t(64, 100), t(64, 100), y, 3.0, 4.0, None, 1.0, "mean")),
        lambda: backward(kd_loss_impl(t(8, 32000), t(8, 32000, grad=False), y[:8], 3.0, 4.0, 1.0, 1.0, "sum")),
        lambda: backward(kd_loss_impl(t(8, 10), t(8, 10, grad=False), y[:8] % 10, reduction="none")),
        lambda: backward(maxout_impl(t(4, 10, 6, 6), 2)),
        lambda: backward(maxout_conv2d_impl(t(4, 32, 16, 16), t(96, 32, 3, 3), t(96), 2, 1, 1)),
        lambda: backward(maxout_conv2d_impl(t(4, 3, 32, 32), t(64, 3, 3, 3), None, 2, 1, 1,
                                            config=GemmConfig(128, 64, 32, 8, fuse_pieces=False))),
        lambda: backward(maxout_linear_impl(t(16, 128), t(2500, 128), t(2500), 5)),
        lambda: backward(hint_loss_impl(t(4, 80, 8, 8), t(4, 192, 7, 7, grad=False), t(384, 80, 2, 2), t(384), 2)),
    ]


def trace_check() -> int:
    """Trace every op the way torch.compile does, without running a kernel: ``torch.export`` (strict, i.e.
    through Dynamo, no graph break allowed) of a forward using all five ops, and ``make_fx`` with fake tensors
    of forward + backward. Returns the number of fitnets_fast ops in the backward-inclusive graph."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from . import hint_loss_impl, kd_loss_impl, maxout_conv2d_impl, maxout_impl, maxout_linear_impl

    def forward(x, w, b, s, t, y, g, h, wr, xl, wl):
        return (maxout_conv2d_impl(x, w, b, 2, 1, 1).square().sum() + kd_loss_impl(s, t, y)
                + hint_loss_impl(g, h, wr, None, 2) + maxout_linear_impl(xl, wl, None, 5).sum()
                + maxout_impl(x, 5).sum())

    def forward_backward(*args):
        return torch.autograd.grad(forward(*args), [a for a in args if a.requires_grad])

    def r(*shape, grad=True):
        return torch.randn(*shape).requires_grad_(grad)

    args = (r(2, 5, 7, 9), r(6, 5, 3, 3), r(6), r(4, 10), r(4, 10, grad=False), torch.randint(0, 10, (4,)),
            r(2, 5, 7, 9), r(2, 3, 6, 8, grad=False), r(6, 5, 2, 2), r(3, 8), r(10, 8))

    class Forward(torch.nn.Module):
        def forward(self, *a):
            return forward(*a)

    exported = torch.export.export(Forward(), args, strict=True)
    fwd_ops = [n for n in exported.graph.nodes if "fitnets_fast" in str(n.target)]
    graph = make_fx(forward_backward, tracing_mode="fake")(*args)
    all_ops = sorted({str(n.target) for n in graph.graph.nodes if "fitnets_fast" in str(n.target)})
    print(f"traced: torch.export(strict) forward with {len(fwd_ops)} fitnets_fast ops; fake forward+backward "
          f"graph uses {', '.join(all_ops)}")
    return len(all_ops)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (default 90)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated torch dtypes")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("aot_check: unset TRITON_INTERPRET (it needs the real compiler)", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    target = GPUTarget("cuda", args.arch, 32)
    failures = 0
    seen = set()
    print(f"triton {triton.__version__}, torch {torch.__version__}, target sm_{args.arch}")
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name.strip())
        with record_launches() as launches:
            for work in _workloads(dtype):
                work()
        for launch in launches:
            sig, constexprs, options = launch.signature()
            key = (launch.kernel.fn.__name__, tuple(sorted(sig.items())), tuple(sorted(constexprs.items())))
            if key in seen:
                continue
            seen.add(key)
            start = time.perf_counter()
            try:
                compiled = triton_compile(ASTSource(launch.kernel, sig, constexprs), target=target, options=options)
                regs = getattr(compiled, "n_regs", None)
                print(f"ok   {time.perf_counter() - start:5.1f}s shared={compiled.metadata.shared:6d}B "
                      f"{'' if regs is None else f'regs={regs} '}{name:8s} {launch.describe()}")
            except Exception as exc:  # report every kernel, then fail
                failures += 1
                print(f"FAIL {name:8s} {launch.describe()}: {type(exc).__name__}: {str(exc)[:2000]}")
    print(f"{len(seen)} kernel specialisations, {failures} failed")
    traced = trace_check()
    return 1 if failures or traced < 6 else 0


if __name__ == "__main__":
    sys.exit(main())
