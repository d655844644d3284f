"""GPU proof of the Triton kernels: accuracy at real sizes, then Triton vs eager vs torch.compile benchmarks.

Run on a CUDA machine (target: under 8 minutes on one H100)::

    python benchmarks/gpu_check.py [--out benchmarks/results/<gpu>.md] [--budget 400]

1. Accuracy: every fused op (forward and every gradient) at FitNet/KD sizes in fp32 (TF32 off), tf32
   (TF32 on: the matmul-based ops) and bf16, by ``fitnets_fast.testing.check_against_reference``: the
   kernel's error against the float64 reference must be no worse than PyTorch's own error in that dtype
   plus 16 eps x scale, with the kernel's outputs poisoned.
2. Benchmarks: median time (``triton.testing.do_bench``) of the forward (under ``no_grad``) and of
   forward + backward, and the peak memory of forward + backward, for Triton (the triton backend's
   ``*_impl``), eager PyTorch (the reference ``*_impl``) and ``torch.compile`` of the reference; all without
   the public ops' argument validation, whose label check syncs the device; at the paper's shapes
   (FitNet-4 maxout convs, the FC maxout, the CIFAR hint regressor; batch 128) and the KD shapes 128x10 to
   4096x32000. KD rows also give the achieved bandwidth of forward + backward as a share of the measured
   device-copy bandwidth (bytes moved by both: ``fitnets_fast.kernels.kd_loss.bytes_moved``); maxout-conv
   rows give the bytes saved for the backward beyond the inputs.
3. A FitNet-4 CIFAR-shaped stage-2 training step (batch 128: forward, KD loss against fixed teacher
   logits, backward, SGD step), eager fp32 / bf16, compiled, and Triton fp32 / bf16 (+ compile).
4. A tiling sweep: each listed configuration of the KD and implicit-GEMM kernels checked for accuracy (fp32)
   and timed at a large shape, against the heuristic's choice.

Order: 1, 3 (its first variant is triton bf16 + torch.compile, the one most likely to show the win), 2, 4.
Time budget (``--budget``, default 400 s): each part has its share (15/30/35/20%) and is stopped when past it
(SIGALRM), saying so in the report; within a part no torch.compile starts past 80% of its share.
``--skip`` drops whole parts. The header records the driver, CUDA and cuDNN versions and the git commit,
and the run refuses to start when the driver supports an older CUDA than Triton's bundled ptxas targets.

Everything is printed as Markdown, with the TF32 flags of each part stated. ``--dry-run`` runs the same
code on tiny shapes on the CPU with the kernels under ``TRITON_INTERPRET=1`` (timings meaningless,
torch.compile with the "eager" backend and no compile of the interpreted kernels), so CI exercises it; give it
on the command line (the interpreter is chosen at import).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import signal
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch

DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before fitnets_fast/triton are imported

from fitnets_fast import _backend, models, ops  # noqa: E402
from fitnets_fast.testing import check_against_reference, tf32  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------- helpers
def bench_ms(fn: Callable[[], object], grad_to_none: Sequence[torch.Tensor] = ()) -> float:
    """Median milliseconds per call."""
    if DEVICE == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=50, grad_to_none=list(grad_to_none),
                                       return_mode="median")
    times = []
    for _ in range(1):  # CPU: the dry run only exercises the code
        for t in grad_to_none:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_mib(fn: Callable[[], object]) -> Optional[float]:
    """Peak memory allocated during one call, above what was allocated before it (MiB); None on CPU."""
    if DEVICE != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def saved_bytes(fn: Callable[[], object], exclude: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for the backward during ``fn()``, beyond ``exclude``."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: Dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def leaf(shape, dtype, *, grad=True, scale=1.0, channels_last=False):
    t = torch.randn(*shape, device=DEVICE, dtype=torch.float32) * scale
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.to(dtype).requires_grad_(grad)


def fmt(value, digits=3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"


class Report:
    def __init__(self):
        self.lines: List[str] = []

    def add(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.add("| " + " | ".join(header) + " |")
        self.add("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            self.add("| " + " | ".join(row) + " |")
        self.add()


# ----------------------------------------------------------------------------------------------- cases
def impl(backend: str, op: str) -> Callable:
    """The backend's ``<op>_impl``: the kernels alone, without the public ops' argument validation (whose
    label-range check synchronises the device on every eager call)."""
    return getattr(_backend.module(backend), f"{op}_impl")


class Case:
    """One op at one shape: ``make(dtype)`` returns (inputs, call(backend, *inputs) -> output)."""

    def __init__(self, name: str, make: Callable, kind: str):
        self.name, self.make, self.kind = name, make, kind


def kd_case(n: int, k: int) -> Case:
    def make(dtype):
        s, t = leaf((n, k), dtype, scale=3.0), leaf((n, k), dtype, grad=False, scale=3.0)
        y = torch.randint(0, k, (n,), device=DEVICE)
        return [s, t, y], lambda backend, s, t, y: impl(backend, "kd_loss")(s, t, y, 3.0, 4.0)

    return Case(f"kd_loss {n}x{k}", make, "kd")


def conv_case(n: int, c_in: int, c_out: int, hw: int, pieces: int = 2, k: int = 3, pad: int = 1) -> Case:
    def make(dtype):
        x = leaf((n, c_in, hw, hw), dtype, channels_last=True)
        w = leaf((c_out * pieces, c_in, k, k), dtype, scale=(c_in * k * k) ** -0.5, channels_last=True)
        b = leaf((c_out * pieces,), dtype, scale=0.1)
        return [x, w, b], lambda backend, x, w, b: impl(backend, "maxout_conv2d")(x, w, b, pieces, 1, pad)

    return Case(f"maxout_conv {n}x{c_in}x{hw}x{hw} -> {c_out}x{pieces}, {k}x{k}", make, "conv")


def linear_case(n: int, c_in: int, c_out: int, pieces: int) -> Case:
    def make(dtype):
        x, w = leaf((n, c_in), dtype), leaf((c_out * pieces, c_in), dtype, scale=c_in ** -0.5)
        b = leaf((c_out * pieces,), dtype, scale=0.1)
        return [x, w, b], lambda backend, x, w, b: impl(backend, "maxout_linear")(x, w, b, pieces)

    return Case(f"maxout_linear {n}x{c_in} -> {c_out}x{pieces}", make, "linear")


def hint_case(n: int, c_g: int, g_hw: int, c_h: int, h_hw: int, pieces: int = 2) -> Case:
    k = g_hw - h_hw + 1

    def make(dtype):
        g = leaf((n, c_g, g_hw, g_hw), dtype, channels_last=True)
        h = leaf((n, c_h, h_hw, h_hw), dtype, grad=False)
        w = leaf((c_h * pieces, c_g, k, k), dtype, scale=(c_g * k * k) ** -0.5, channels_last=True)
        b = leaf((c_h * pieces,), dtype, scale=0.1)
        return [g, h, w, b], lambda backend, g, h, w, b: impl(backend, "hint_loss")(g, h, w, b, pieces, 0)

    return Case(f"hint_loss {n}x{c_g}x{g_hw}x{g_hw} -> {c_h}x{h_hw}x{h_hw}, {k}x{k}", make, "hint")


def cases(dry: bool) -> Dict[str, List[Case]]:
    if dry:
        return {
            "accuracy": [kd_case(6, 10), kd_case(3, 70), conv_case(2, 3, 4, 9), linear_case(5, 12, 3, 5),
                         hint_case(2, 5, 6, 4, 5)],
            "bench": [kd_case(6, 10), conv_case(2, 3, 4, 9), linear_case(5, 12, 3, 5), hint_case(2, 5, 6, 4, 5)],
        }
    fitnet_convs = [conv_case(128, 3, 32, 32), conv_case(128, 32, 32, 32), conv_case(128, 48, 80, 16),
                    conv_case(128, 80, 128, 8)]
    return {
        "accuracy": [kd_case(128, 10), kd_case(256, 100), kd_case(64, 32000)] + fitnet_convs[1:3]
                    + [linear_case(128, 128, 500, 5), hint_case(128, 80, 8, 192, 7)],
        "bench": [kd_case(128, 10), kd_case(128, 100), kd_case(1024, 1000), kd_case(4096, 32000)] + fitnet_convs
                 + [linear_case(128, 128, 500, 5), hint_case(128, 80, 8, 192, 7)],
    }


# ---------------------------------------------------------------------------------------------- part 1
def accuracy(report: Report, dry: bool) -> int:
    report.add("## 1. Accuracy against the float64 reference (forward and every gradient)")
    report.add("Rule: kernel error <= PyTorch's own error in that precision + 16 eps x max|truth| "
               "(fitnets_fast.testing; eps = 2^-10 in tf32 mode), kernel outputs NaN-poisoned.")
    report.add()
    rows, failures = [], 0
    modes = [("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)]
    for case in cases(dry)["accuracy"]:
        for mode, dtype, allow in modes:
            if mode == "tf32" and case.kind == "kd":
                continue  # no matmul in the KD loss: tf32 is fp32
            if mode == "bf16" and DEVICE == "cpu":
                continue  # the interpreter does not round bf16 like a GPU
            inputs, call = case.make(torch.float64)
            inputs = [x.detach() if x.is_floating_point() else x for x in inputs]
            start = time.perf_counter()
            try:
                check_against_reference(lambda *a: call("triton", *a), lambda *a: call("reference", *a),
                                        inputs, dtype, allow_tf32=allow)
                verdict = "pass"
            except AssertionError as exc:
                failures += 1
                verdict = f"**FAIL**: {exc}"
            rows.append([case.name, mode, verdict, f"{time.perf_counter() - start:.1f}"])
    report.table(["op", "mode", "result", "s"], rows)
    return failures


# ---------------------------------------------------------------------------------------------- part 2
def _bench_dtypes(case: Case, dry: bool) -> List[torch.dtype]:
    """fp32 only for the small KD shapes; bf16 only for the FitNet convs (the target dtype) but the last;
    both elsewhere. The dry run (interpreter) uses fp32 only."""
    if dry or (case.kind == "kd" and "32000" not in case.name):
        return [torch.float32]
    if case.kind == "conv" and "-> 128x" not in case.name:
        return [torch.bfloat16]
    return [torch.float32, torch.bfloat16]


def _loss_of(out: torch.Tensor, grad_out: torch.Tensor) -> None:
    out.backward(grad_out)


def benchmarks(report: Report, dry: bool, budget_end: float) -> None:
    report.add("## 2. Kernels: Triton vs eager vs torch.compile")
    from fitnets_fast.kernels._common import conv_allows_tf32, matmul_allows_tf32

    report.add(f"TF32 allowed: matmul={matmul_allows_tf32()}, conv={conv_allows_tf32()} "
               f"(PyTorch defaults; fp32 rows use them as given). "
               "Times are medians in ms; fwd runs under no_grad; peak = extra memory of one fwd+bwd.")
    report.add()
    copy_gbs = None
    if DEVICE == "cuda":
        src = torch.empty(2 ** 28, dtype=torch.uint8, device=DEVICE)
        dst = torch.empty_like(src)
        copy_gbs = 2 * src.numel() / bench_ms(lambda: dst.copy_(src)) / 1e6
        report.add(f"Measured device-copy bandwidth: {copy_gbs:.0f} GB/s (read + write of 256 MiB).")
        report.add()
        del src, dst
    compile_backend = "eager" if dry else "inductor"
    rows = []
    for case in cases(dry)["bench"]:
        dtypes = _bench_dtypes(case, dry)
        for dtype in dtypes:
            inputs, call = case.make(dtype)
            leaves = [x for x in inputs if x.is_floating_point() and x.requires_grad]
            with torch.no_grad():
                grad_out = torch.randn_like(call("reference", *inputs).float()).to(dtype)
            compiled = torch.compile(lambda *a: call("reference", *a), backend=compile_backend)
            impls = {"triton": lambda *a: call("triton", *a), "eager": lambda *a: call("reference", *a),
                     "compile": compiled}
            res = {}
            for name, fn in impls.items():
                if name == "compile" and time.perf_counter() > budget_end:
                    res[name] = ("skipped (budget)",) * 3
                    continue

                def fwd(fn=fn):
                    with torch.no_grad():
                        return fn(*inputs)

                def fwd_bwd(fn=fn):
                    _loss_of(fn(*inputs), grad_out)

                fwd_bwd()  # warm-up / compile
                res[name] = (bench_ms(fwd), bench_ms(fwd_bwd, leaves), peak_mib(fwd_bwd))
            extra = ""
            if case.kind == "kd" and copy_gbs:
                from fitnets_fast.kernels.kd_loss import bytes_moved, kd_config

                s, t, y = inputs
                moved = bytes_moved(*s.shape, s.element_size(), y.element_size(), s.requires_grad, t.requires_grad,
                                    kd_config(*s.shape))
                extra = f"{moved / 2 ** 20:.0f} MiB moved: {moved / res['triton'][1] / 1e6 / copy_gbs:.0%} of copy BW"
            if case.kind == "conv":
                # Saved for the backward beyond x, weight, bias: eager's int64 argmax (+ views) vs 1-byte winners.
                saved = {n: saved_bytes(lambda: impls[n](*inputs), leaves) for n in ("triton", "eager")}
                extra = (f"saved beyond inputs: triton {saved['triton'] / 2 ** 10:.1f} KiB, "
                         f"eager {saved['eager'] / 2 ** 10:.1f} KiB")
            t, e, c = res["triton"], res["eager"], res["compile"]
            speed = (f"{e[1] / t[1]:.2f}x / {c[1] / t[1]:.2f}x" if not isinstance(c[1], str)
                     else f"{e[1] / t[1]:.2f}x / n/a")
            rows.append([case.name, str(dtype).replace("torch.", ""), *(fmt(v[0]) for v in (t, e, c)),
                         *(fmt(v[1]) for v in (t, e, c)), speed, *(fmt(v[2]) for v in (t, e, c)), extra])
            del inputs, leaves, grad_out
    report.table(["case", "dtype", "fwd triton", "fwd eager", "fwd compile", "f+b triton", "f+b eager",
                  "f+b compile", "f+b speed-up vs eager / compile", "peak MiB triton", "peak eager",
                  "peak compile", "notes"], rows)


class Family:
    """A kernel at one shape for the tiling sweep: ``make(dtype, batch)`` gives the inputs,
    ``run(config, *inputs)`` the kernel with a forced tiling, ``reference(*inputs)`` the spec."""

    def __init__(self, name, make, run, reference_fn, batch, small_batch, configs, heuristic, dtypes):
        self.name, self.make, self.run, self.reference = name, make, run, reference_fn
        self.batch, self.small_batch, self.configs, self.heuristic, self.dtypes = (
            batch, small_batch, configs, heuristic, dtypes)


def _families(dry: bool) -> List[Family]:
    from fitnets_fast import reference
    from fitnets_fast.kernels import hint_loss_impl, kd_loss_impl, maxout_conv2d_impl
    from fitnets_fast.kernels._common import GemmConfig, gemm_config
    from fitnets_fast.kernels.kd_loss import KDConfig, kd_config

    k = 50 if dry else 32000

    def kd_make(dtype, n):
        return [leaf((n, k), dtype, scale=3.0), leaf((n, k), dtype, grad=False, scale=3.0),
                torch.randint(0, k, (n,), device=DEVICE)]

    def conv_make(c_in, hw, c_out):
        def make(dtype, n):
            return [leaf((n, c_in, hw, hw), dtype, channels_last=True),
                    leaf((2 * c_out, c_in, 3, 3), dtype, scale=(9 * c_in) ** -0.5, channels_last=True),
                    leaf((2 * c_out,), dtype, scale=0.1)]
        return make

    def hint_make(dtype, n):
        return [leaf((n, 80, 8, 8), dtype, channels_last=True), leaf((n, 192, 7, 7), dtype, grad=False),
                leaf((384, 80, 2, 2), dtype, scale=320 ** -0.5, channels_last=True), leaf((384,), dtype, scale=0.1)]

    def conv_run(cfg, x, w, b):
        return maxout_conv2d_impl(x, w, b, 2, 1, 1, config=cfg)

    def conv_ref(x, w, b):
        return reference.maxout_conv2d_impl(x, w, b, 2, 1, 1)

    if dry:
        return [Family("kd_loss Nx50", kd_make, lambda cfg, *a: kd_loss_impl(*a, config=cfg), reference.kd_loss_impl,
                       4, 3, [KDConfig(1, 16)], kd_config(4, k), [torch.float32]),
                Family("maxout_conv Nx3x9x9 -> 4x2", conv_make(3, 9, 4), conv_run, conv_ref, 2, 2,
                       [GemmConfig(16, 16, 16)], gemm_config(2 * 81, 4, 3), [torch.float32])]
    gemm = [GemmConfig(64, 32, 32, 4), GemmConfig(128, 32, 32, 4), GemmConfig(128, 64, 32, 8),
            GemmConfig(64, 64, 64, 4), GemmConfig(128, 32, 32, 4, False), GemmConfig(128, 64, 32, 8, False)]
    both = [torch.float32, torch.bfloat16]
    return [
        Family("kd_loss Nx32000", kd_make, lambda cfg, *a: kd_loss_impl(*a, config=cfg), reference.kd_loss_impl,
               4096, 64, [KDConfig(1, 2048, 8), KDConfig(1, 4096, 8), KDConfig(1, 4096, 16), KDConfig(1, 8192, 16)],
               kd_config(4096, k), both),
        Family("maxout_conv Nx32x32x32 -> 32x2", conv_make(32, 32, 32), conv_run, conv_ref, 128, 4, gemm,
               gemm_config(128 * 1024, 32, 32), [torch.bfloat16]),
        Family("maxout_conv Nx80x8x8 -> 128x2", conv_make(80, 8, 128), conv_run, conv_ref, 128, 4, gemm,
               gemm_config(128 * 64, 128, 80), [torch.bfloat16]),
        Family("hint_loss Nx80x8x8 -> 192x7x7", hint_make,
               lambda cfg, g, h, w, b: hint_loss_impl(g, h, w, b, 2, 0, config=cfg),
               lambda g, h, w, b: reference.hint_loss_impl(g, h, w, b, 2, 0), 128, 4, gemm,
               gemm_config(128 * 49, 192, 80), [torch.bfloat16]),
    ]


def tiling_sweep(report: Report, dry: bool, budget_end: float) -> int:
    """Every tiling of a list (those the CPU tests use are small; these are the GPU-sized ones) checked for
    accuracy in fp32 (TF32 off) at a small batch and timed (forward + backward) at the full batch, so each
    configuration is proven on the GPU and the heuristics of ``kd_config`` / ``gemm_config`` can be compared
    with the measured best. Returns the number of accuracy failures."""
    report.add("## 4. Tiling sweep (accuracy fp32 at a small batch; forward + backward ms at the full batch; "
               "* = the heuristic's choice)")
    report.add()
    rows, failures = [], 0
    for fam in _families(dry):
        for cfg in fam.configs:
            if time.perf_counter() > budget_end:
                rows.append([fam.name, "", str(tuple(cfg)), "skipped (time budget)", ""])
                continue
            inputs = [x.detach() if x.is_floating_point() else x for x in fam.make(torch.float64, fam.small_batch)]
            try:
                check_against_reference(lambda *a: fam.run(cfg, *a), fam.reference, inputs, torch.float32)
                verdict = "pass"
            except AssertionError as exc:
                failures += 1
                verdict = f"**FAIL**: {exc}"
            star = "*" if cfg == fam.heuristic else ""
            for dtype in fam.dtypes:
                inputs = fam.make(dtype, fam.batch)
                leaves = [x for x in inputs if x.is_floating_point() and x.requires_grad]
                with torch.no_grad():
                    grad_out = torch.randn_like(fam.run(cfg, *inputs).float()).to(dtype)
                ms = bench_ms(lambda: fam.run(cfg, *inputs).backward(grad_out), leaves)
                rows.append([fam.name.replace("N", str(fam.batch), 1), str(dtype).replace("torch.", ""),
                             f"{tuple(cfg)}{star}", verdict, fmt(ms)])
                del inputs, leaves, grad_out
    report.table(["kernel", "dtype", "config", "accuracy (fp32)", "f+b ms"], rows)
    return failures


# ---------------------------------------------------------------------------------------------- part 3
def training_step(report: Report, dry: bool, budget_end: float) -> None:
    # The dry run uses the small 8x8-digits FitNet: FitNet-4 takes minutes per step under the interpreter.
    batch, arch = (2, "fitnet_digits") if dry else (128, "fitnet4")
    report.add(f"## 3. {arch} training step (batch {batch}, KD loss vs fixed teacher logits, SGD)")
    report.add("fp32 rows with TF32 off (PyTorch's default for matmul; cuDNN TF32 turned off too); bf16 rows "
               "are pure bf16 (parameters and activations), not autocast.")
    report.add()
    compile_backend = "eager" if dry else "inductor"
    # The configuration most likely to show the win first, so a budget cut never loses it.
    variants = [("triton bf16 + compile", "triton", torch.bfloat16, True),
                ("eager fp32", "reference", torch.float32, False), ("eager bf16", "reference", torch.bfloat16, False),
                ("compile fp32", "reference", torch.float32, True), ("compile bf16", "reference", torch.bfloat16, True),
                ("triton fp32", "triton", torch.float32, False), ("triton bf16", "triton", torch.bfloat16, False)]
    rows, measured = [], {}
    x32 = torch.randn(batch, *models.arch(arch).input_shape, device=DEVICE)
    teacher32 = torch.randn(batch, 10, device=DEVICE) * 3
    y = torch.randint(0, 10, (batch,), device=DEVICE)
    for label, backend, dtype, use_compile in variants:
        if dry and dtype == torch.bfloat16:
            continue
        if use_compile and backend == "triton" and _backend._TRITON_INTERPRET:
            rows.append([label, "n/a (interpreted kernels cannot be traced)", "", ""])
            continue
        if use_compile and time.perf_counter() > budget_end:
            rows.append([label, "skipped (time budget)", "", ""])
            continue
        torch.manual_seed(0)
        model = models.build(arch, backend=backend).to(DEVICE, dtype)
        if backend == "triton":
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x, teacher = x32.to(dtype), teacher32.to(dtype)

        def step_loss(x, teacher, y, model=model, backend=backend):
            return ops.kd_loss(model(x), teacher, y, 3.0, 4.0, backend=backend)

        loss_fn = torch.compile(step_loss, backend=compile_backend) if use_compile else step_loss

        def step(loss_fn=loss_fn, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss_fn(x, teacher, y).backward()
            opt.step()

        start = time.perf_counter()
        with tf32(False):
            step()
            first = time.perf_counter() - start
            ms = bench_ms(step)
            peak = peak_mib(step)
        measured[label] = ms
        rows.append([label, fmt(ms), label, fmt(peak), f"{first:.1f}"])
        del model, opt
    base = measured.get("eager fp32")
    for row in rows:  # the speed column, once eager fp32 (measured after the first variant) is known
        if row[2] in measured:
            row[2] = f"{base / measured[row[2]]:.2f}x" if base else "n/a"
    report.table(["variant", "ms / step", "speed vs eager fp32", "peak MiB", "first step s (compile)"], rows)


class PartTimeout(Exception):
    """A part ran past its time budget."""


class _Timer:
    expired = False


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[_Timer]:
    """Raise ``PartTimeout`` inside the block once ``seconds`` have passed (SIGALRM: the main thread only),
    so a part that overruns (a long compile, a slow kernel) is stopped, not waited for. The yielded timer's
    ``expired`` tells a caller whether an exception that wraps the timeout (torch.compile and Triton wrap
    errors raised inside them) came from it. ``seconds=inf``: no limit."""
    timer = _Timer()

    def expire(signum, frame):
        timer.expired = True
        raise PartTimeout(f"stopped after its {seconds:.0f} s budget")

    if seconds == float("inf"):
        yield timer
        return
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield timer
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _cuda_driver_version() -> Optional[int]:
    """The CUDA version the installed driver supports, as 1000*major + 10*minor (cuDriverGetVersion)."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    return version.value if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 else None


def ptxas_cuda_version() -> Optional[tuple]:
    """(major, minor) of the CUDA release of Triton's bundled ptxas, or None if it cannot be run."""
    import re
    import subprocess

    try:
        from triton.backends.nvidia.compiler import get_ptxas

        out = subprocess.run([get_ptxas(90).path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except Exception:  # no bundled ptxas (not a CUDA build of triton)
        return None
    found = re.search(r"release (\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None


def driver_check() -> tuple:
    """(ok, message): whether the driver supports the CUDA version Triton's bundled ptxas compiles for (a
    newer ptxas emits PTX/cubins an older driver refuses to load)."""
    driver, ptxas = _cuda_driver_version(), ptxas_cuda_version()
    if driver is None or ptxas is None:
        return True, f"driver CUDA {driver}, Triton ptxas CUDA {ptxas}: not both known, not checked"
    have = (driver // 1000, driver % 1000 // 10)
    if have < ptxas:
        return False, (f"the NVIDIA driver supports CUDA {have[0]}.{have[1]} but Triton's bundled ptxas is CUDA "
                       f"{ptxas[0]}.{ptxas[1]}: its kernels would fail to load. Update the driver or point "
                       f"TRITON_PTXAS_PATH at a ptxas no newer than the driver.")
    return True, f"driver CUDA {have[0]}.{have[1]} >= Triton ptxas CUDA {ptxas[0]}.{ptxas[1]}"


def environment() -> str:
    """Driver, CUDA and cuDNN versions and the git commit, for the report's header."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    driver = _cuda_driver_version()
    return (f"driver CUDA {'n/a' if driver is None else f'{driver // 1000}.{driver % 1000 // 10}'}, "
            f"CUDA (torch) {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"git {commit or 'unknown'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Triton kernel accuracy + benchmarks on a CUDA GPU")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--out", help="also write the Markdown report to this file")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds, shared by the parts: accuracy 15%%, training step 30%%, kernels 35%%, "
                             "sweep 20%%; a part past its share is stopped (default 400; no limit in a dry run)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: accuracy,bench,sweep,step")
    args = parser.parse_args(argv)
    if not args.dry_run and DEVICE != "cuda":
        print("gpu_check: no CUDA device (use --dry-run to exercise it on the CPU)", file=sys.stderr)
        return 2
    if DEVICE == "cpu" and not _backend._TRITON_INTERPRET:
        print("gpu_check: the CPU dry run needs TRITON_INTERPRET=1 before import (pass --dry-run on the command "
              "line)", file=sys.stderr)
        return 2
    if not _backend.implements("triton", "kd_loss"):
        print(f"gpu_check: triton backend unavailable: {_backend.unavailable_reason('triton')}", file=sys.stderr)
        return 2
    budget = args.budget if args.budget is not None else float("inf") if args.dry_run else 400.0
    start = time.perf_counter()
    skip = set(filter(None, args.skip.split(",")))
    report = Report()
    import triton

    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (dry run, TRITON_INTERPRET=1)"
    report.add(f"# fitnets_fast Triton kernels on {name}")
    report.add(f"torch {torch.__version__}, triton {triton.__version__}, {environment()}; "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    ok, message = driver_check()
    report.add(f"Driver check: {message}")
    report.add()
    if not ok and not args.dry_run:
        print(f"gpu_check: {message}", file=sys.stderr)
        return 2
    failures = 0
    # Each part has its own share of the budget; a part past it is stopped (time_limit) and reported.
    parts = [("accuracy", 0.15, lambda end: accuracy(report, args.dry_run)),
             ("step", 0.30, lambda end: training_step(report, args.dry_run, end)),
             ("bench", 0.35, lambda end: benchmarks(report, args.dry_run, end)),
             ("sweep", 0.20, lambda end: tiling_sweep(report, args.dry_run, end))]
    for part, share, run in parts:
        if part in skip:
            continue
        seconds = share * budget
        part_start = time.perf_counter()
        with time_limit(seconds) as timer:
            try:
                # Within a part, no torch.compile is started past 80% of its share.
                failures += run(part_start + 0.8 * seconds) or 0
            except Exception as exc:
                if not timer.expired:
                    raise
                report.add(f"**{part}: stopped after its {seconds:.0f} s budget** ({type(exc).__name__}; "
                           "results above this line are complete)")
                report.add()
    report.add(f"Total {time.perf_counter() - start:.0f} s; accuracy failures: {failures}.")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(report.lines) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
