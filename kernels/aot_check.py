"""Compile every Triton kernel for a CUDA architecture without a GPU (``python -m fitnets_fast.kernels.aot_check``).

The interpreter (``TRITON_INTERPRET=1``, how CI runs the kernels) executes kernels as NumPy and so misses
what only the real compiler decides: type mismatches in loop-carried values, unsupported ``tl.dot`` operand
types, registers, spills and shared memory. This tool runs the ops' host wrappers forward (with and without
gradients) and backward on CPU tensors with every kernel launch intercepted (``record_launches``), then
compiles each distinct launch the way the runtime would on the GPU: the arguments are specialised by
Triton's own binder (integers equal to 1 become constants, integers and pointers divisible by 16 get the
divisibility hint the software pipeliner needs), then Triton's full pipeline down to a cubin for the target
(default sm_90, the H100/H200) with its bundled ``ptxas``. Per launch it reports the shared memory (failing
above the target's per-block limit: 232,448 bytes on sm_90), the registers and the bytes spilled (failing
on any spill). Covered: every dtype the tests and the trainer use (float32 with TF32 on and off, bfloat16,
float16, float64), gradient and no-gradient variants, the small shapes of the tests and every layer of the
preset networks and their hint regressors at the trainer's batch. Then it traces the ops as torch.compile
would (``trace_check``: Dynamo export and fake-tensor forward + backward). It must run without
``TRITON_INTERPRET`` (it refuses otherwise). ``--quick`` compiles only the small shapes in one dtype (CI).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional

import torch

# Shared memory one block may use (bytes), by compute capability x10 (opt-in maximum).
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
TRAINER_BATCH = 128
# (teacher, student) pairs the trainer's presets train: every layer of both and the regressor between them.
PAIRS = [("teacher_cifar", f"fitnet{i}") for i in range(1, 5)] + [
    ("teacher_svhn", "fitnet_svhn"), ("teacher_svhn", "fitnet_svhn_fitnet4"), ("teacher_mnist", "fitnet_mnist"),
    ("teacher_mnist_code", "fitnet_mnist_code"), ("teacher_digits", "fitnet_digits")]


class _Launch:
    """One intercepted ``kernel[grid](*args, **kwargs)``."""

    def __init__(self, kernel, args, kwargs):
        self.kernel, self.args, self.kwargs = kernel, args, dict(kwargs)

    def describe(self) -> str:
        consts = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.kernel.fn.__name__}({consts})"


@contextlib.contextmanager
def record_launches() -> Iterator[List[_Launch]]:
    """Within the block, every ``wrap_triton(kernel)[grid](...)`` of fitnets_fast.kernels is recorded, not run,
    and the triton backend takes CPU tensors (as under ``TRITON_INTERPRET=1``), so that models built with
    ``backend="triton"`` reach the kernels through the ops' dispatch."""
    from . import hint_loss, kd_loss, maxout, maxout_conv
    from .. import kernels as package

    launches: List[_Launch] = []

    def fake_wrap(kernel):
        class _Grid:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: launches.append(_Launch(kernel, args, kwargs))

        return _Grid()

    modules = (hint_loss, kd_loss, maxout, maxout_conv)
    saved = [m.wrap_triton for m in modules]
    saved_interpret = package._TRITON_INTERPRET
    for m in modules:
        m.wrap_triton = fake_wrap
    package._TRITON_INTERPRET = True
    try:
        yield launches
    finally:
        package._TRITON_INTERPRET = saved_interpret
        for m, w in zip(modules, saved):
            m.wrap_triton = w


class Compiled(NamedTuple):
    """What the compiler says about one specialisation."""

    shared: int
    registers: Optional[int]
    spill_stores: int
    spill_loads: int
    seconds: float


class Compiler:
    """Compiles recorded launches for ``GPUTarget("cuda", arch, 32)`` exactly as ``JITFunction.run`` would
    specialise them, and reads registers and spills from ``ptxas -v``."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend

        self.target = GPUTarget("cuda", arch, 32)
        self.backend = make_backend(self.target)
        self.binders: Dict[object, Callable] = {}

    def key(self, launch: _Launch):
        """The runtime's cache key of this launch (kernel, specialisation, options)."""
        bound, spec, options = self._bind(launch)
        return launch.kernel.fn.__qualname__, str(spec), str(sorted(launch.kwargs.items()))

    def _bind(self, launch: _Launch):
        from triton.runtime.jit import create_function_from_signature

        kernel = launch.kernel
        if kernel not in self.binders:
            self.binders[kernel] = create_function_from_signature(kernel.signature, kernel.params, self.backend)
        return self.binders[kernel](*launch.args, **launch.kwargs)

    def compile(self, launch: _Launch) -> Compiled:
        from triton import knobs
        from triton.compiler import ASTSource
        from triton.compiler import compile as triton_compile

        bound, spec, options = self._bind(launch)
        options, signature, constexprs, attrs = launch.kernel._pack_args(
            self.backend, dict(launch.kwargs), bound, spec, options)
        start = time.perf_counter()
        log = io.StringIO()
        # Always compile: a kernel found in Triton's cache would come back without a ptxas report.
        with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            knobs.compilation.always_compile = True
            compiled = triton_compile(ASTSource(launch.kernel, signature, constexprs, attrs), target=self.target,
                                      options=options.__dict__)
        text = log.getvalue()
        regs = re.findall(r"Used (\d+) registers", text)
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
        return Compiled(compiled.metadata.shared, int(regs[-1]) if regs else None,
                        sum(int(a) for a, _ in spills), sum(int(b) for _, b in spills), time.perf_counter() - start)


def _small_workloads(dtype: torch.dtype) -> List[Callable[[], None]]:
    """Forward + backward calls at the tests' shapes covering every kernel and tiling regime."""
    from . import hint_loss_impl, kd_loss_impl, maxout_conv2d_impl, maxout_impl, maxout_linear_impl
    from ._common import GemmConfig

    def t(*shape, grad=True, dt=dtype):
        return torch.randn(*shape, dtype=dt).requires_grad_(grad)

    def backward(out):
        if out.requires_grad:
            out.sum().backward()

    y = torch.randint(0, 100, (64,))
    return [
        lambda: backward(kd_loss_impl(t(64, 100), t(64, 100), y, 3.0, 4.0, None, 1.0, "mean")),
        lambda: backward(kd_loss_impl(t(8, 32000), t(8, 32000, grad=False), y[:8], 3.0, 4.0, 1.0, 1.0, "sum")),
        lambda: backward(kd_loss_impl(t(8, 10), t(8, 10, grad=False), y[:8] % 10, reduction="none")),
        lambda: backward(maxout_impl(t(4, 10, 6, 6), 2)),
        lambda: backward(maxout_conv2d_impl(t(4, 32, 16, 16), t(96, 32, 3, 3), t(96), 2, 1, 1)),
        lambda: backward(maxout_conv2d_impl(t(4, 3, 32, 32), t(64, 3, 3, 3), None, 2, 1, 1,
                                            config=GemmConfig(64, 32, 16, 8, fuse_pieces=False))),
        # untied biases (MNIST) on a one-channel input (flattened taps), fused and per-piece
        lambda: backward(maxout_conv2d_impl(t(4, 1, 12, 12), t(32, 1, 5, 5), t(32, 8, 8), 2)),
        lambda: backward(maxout_conv2d_impl(t(4, 16, 9, 9), t(48, 16, 3, 3), t(48, 7, 7), 3)),
        lambda: backward(hint_loss_impl(t(4, 16, 6, 6), t(4, 48, 4, 4, grad=False), t(96, 16, 3, 3),
                                        t(96, 4, 4), 2)),
        lambda: backward(maxout_linear_impl(t(16, 128), t(2500, 128), t(2500), 5)),
        lambda: backward(hint_loss_impl(t(4, 80, 8, 8), t(4, 192, 7, 7, grad=False), t(384, 80, 2, 2), t(384), 2)),
    ]


def _network_workloads(dtype: torch.dtype, batch: int = TRAINER_BATCH) -> List[Callable[[], None]]:
    """Forward of every preset teacher and student at the trainer's batch (launches recorded, so no
    backward: its kernels do not depend on the layer shape beyond what the small workloads cover), the
    hint regressor between each pair, and the KD loss on the student's logits."""
    from .. import models
    from . import kd_loss_impl

    def run(teacher_name: str, student_name: str) -> None:
        teacher = models.build(teacher_name, backend="triton").to(dtype)
        student = models.build(student_name, backend="triton").to(dtype)
        x = torch.zeros(batch, *student.input_shape, dtype=dtype)
        teacher(x)
        logits = student(x)
        kd_loss_impl(logits, torch.zeros_like(logits).detach(), torch.zeros(batch, dtype=torch.long))
        hint = teacher.layer_output_shape(teacher.hint_layer)
        guided = student.layer_output_shape(student.guided_layer)
        regressor = models.build_regressor(hint, guided, backend="triton").to(dtype)
        regressor(torch.zeros(batch, *guided, dtype=dtype, requires_grad=True), torch.zeros(batch, *hint, dtype=dtype))

    return [lambda pair=pair: run(*pair) for pair in PAIRS]


def _modes(dtypes: List[torch.dtype]):
    """(label, dtype, TF32 allowed, gradients enabled) for every variant to record."""
    for dtype in dtypes:
        name = str(dtype).replace("torch.", "")
        for allow in ((False, True) if dtype == torch.float32 else (False,)):
            for grad in (True, False):
                yield f"{name}{'+tf32' if allow else ''}{'' if grad else ' no-grad'}", dtype, allow, grad


def record(compiler: Compiler, dtypes: List[torch.dtype], networks: bool) -> Dict[tuple, tuple]:
    """Every distinct launch (by the runtime's cache key) of the workloads in every mode: key -> (mode, launch)."""
    from fitnets_fast.testing import tf32

    found: Dict[tuple, tuple] = {}
    for mode, dtype, allow, grad in _modes(dtypes):
        works = _small_workloads(dtype) + (_network_workloads(dtype) if networks else [])
        with tf32(allow), torch.set_grad_enabled(grad), record_launches() as launches:
            for work in works:
                work()
        for launch in launches:
            found.setdefault(compiler.key(launch), (mode, launch))
    return found


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
    parser.add_argument("--dtypes", default="float32,bfloat16,float16,float64", help="comma-separated torch dtypes")
    parser.add_argument("--quick", action="store_true",
                        help="the tests' small shapes only, in bfloat16 unless --dtypes is given (CI)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("aot_check: unset TRITON_INTERPRET (it needs the real compiler)", file=sys.stderr)
        return 2
    import triton

    dtype_names = "bfloat16" if args.quick and "--dtypes" not in (argv if argv is not None else sys.argv) \
        else args.dtypes
    dtypes = [getattr(torch, name.strip()) for name in dtype_names.split(",")]
    limit = SHARED_LIMIT.get(args.arch)
    compiler = Compiler(args.arch)
    print(f"triton {triton.__version__}, torch {torch.__version__}, target sm_{args.arch}, shared-memory limit "
          f"{limit} B; dtypes {dtype_names}; {'small shapes' if args.quick else 'small shapes + preset networks'}")
    launches = record(compiler, dtypes, networks=not args.quick)
    failures = 0
    for mode, launch in launches.values():
        try:
            res = compiler.compile(launch)
        except Exception as exc:  # report every kernel, then fail
            failures += 1
            print(f"FAIL {mode:18s} {launch.describe()}: {type(exc).__name__}: {str(exc)[:2000]}")
            continue
        problems = []
        if limit is not None and res.shared > limit:
            problems.append(f"shared memory {res.shared} B > {limit} B")
        if res.spill_stores or res.spill_loads:
            problems.append("spills")
        if res.registers is None:
            problems.append("no ptxas report: registers and spills unknown")
        failures += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {res.seconds:5.1f}s shared={res.shared:6d}B regs={res.registers} "
              f"spill={res.spill_stores}/{res.spill_loads}B {mode:18s} {launch.describe()}"
              + (f"  <- {'; '.join(problems)}" if problems else ""), flush=True)
    print(f"{len(launches)} kernel specialisations, {failures} failed")
    traced = trace_check()
    return 1 if failures or traced < 6 else 0


if __name__ == "__main__":
    sys.exit(main())
