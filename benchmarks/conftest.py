"""Shared set-up of the CPU kernel benchmarks (``pytest benchmarks/ --benchmark-only``).

Each benchmark test times several variants of one computation (fused C++ kernel, eager reference,
``torch.compile`` of the reference, ...) **interleaved**: every round runs each variant once, so host noise
hits all variants alike. Per-variant medians (ms) go to the test's ``extra_info`` (``variants``), next to
the allocator setting and thread count; pytest-benchmark's own statistics time one whole round.
``benchmarks/make_table.py`` turns the saved JSON into the ratio tables.

Environment: ``FITNETS_BENCH_THREADS`` (default: all cores), ``FITNETS_BENCH_ROUNDS`` (default 7).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Dict

import pytest
import torch

_ALLOCATOR_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX",
                   "LD_PRELOAD", "THP_MEM_ALLOC_ENABLE", "FITNETS_FAST_BUFFER_POOL_MB")


def allocator_setting() -> str:
    """The allocator-related environment, or "glibc default" when none is set (the fused ops' own buffer
    reuse, ``fitnets_fast._alloc``, is on unless ``FITNETS_FAST_BUFFER_POOL_MB=0`` is listed)."""
    set_vars = [f"{k}={os.environ[k]}" for k in _ALLOCATOR_VARS if os.environ.get(k)]
    return " ".join(set_vars) if set_vars else "glibc default"


def _threads() -> int:
    return int(os.environ.get("FITNETS_BENCH_THREADS", os.cpu_count() or 1))


def rounds(default: int = 7) -> int:
    return int(os.environ.get("FITNETS_BENCH_ROUNDS", default))


def pytest_configure(config):
    torch.set_num_threads(_threads())


def pytest_report_header(config):
    return (f"fitnets_fast benchmarks: torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"allocator: {allocator_setting()}")


@pytest.fixture
def interleaved(benchmark):
    """``run(variants, rounds, warmup=1, **info)``: time ``{name: fn}`` round-robin; store medians in ms."""

    def run(variants: Dict[str, Callable[[], object]], n_rounds: int, warmup: int = 1, **info):
        samples = {name: [] for name in variants}

        def one_round():
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)

        for _ in range(warmup):  # compiles the compiled variants, warms caches and allocator
            for fn in variants.values():
                fn()
        benchmark.pedantic(one_round, rounds=n_rounds, iterations=1, warmup_rounds=0)
        benchmark.extra_info.update(info)
        benchmark.extra_info["allocator"] = allocator_setting()
        benchmark.extra_info["threads"] = torch.get_num_threads()
        benchmark.extra_info["variants"] = {
            name: {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts), "max_ms": 1e3 * max(ts)}
            for name, ts in samples.items()
        }
        return benchmark.extra_info["variants"]

    return run


def grad_of(fn: Callable, inputs, grad_out=None) -> Callable[[], object]:
    """A closure running ``fn(*inputs)`` forward and backward to the inputs that require grad."""
    wrt = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]

    def step():
        out = fn(*inputs)
        return torch.autograd.grad(out, wrt, grad_out)

    return step


def no_grad(fn: Callable, inputs) -> Callable[[], object]:
    """A closure running ``fn(*inputs)`` forward only, without autograd."""

    def step():
        with torch.no_grad():
            return fn(*inputs)

    return step


def amax_maxout(x: torch.Tensor, pieces: int) -> torch.Tensor:
    """Maxout over dim 1 as the project's eager CPU baseline writes it: ``(N, C*pieces, *rest)`` viewed as
    ``(N, C, pieces, *rest)``, then ``amax(2)`` (whose backward is slower than ``max(dim).values``'s, the
    reference's formulation)."""
    return x if pieces == 1 else x.unflatten(1, (x.shape[1] // pieces, pieces)).amax(2)
