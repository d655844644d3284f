"""``fitnets_fast.info()``: versions, devices and the backend each op uses."""
from __future__ import annotations

import platform
import sys
from typing import Any, Dict

import torch

from . import _backend, _checks


def info(print_it: bool = True) -> Dict[str, Any]:
    """Collect (and by default print) versions, the compute devices and each op's backend choice.

    Returns a dict with keys ``versions``, ``devices`` (``cpu_bf16``: whether oneDNN runs bfloat16
    convolutions natively here, what ``amp="bf16"`` gains from on CPU), ``backends`` (availability, with
    the reason when one is unavailable), ``ops`` (for each op, the backend "auto" picks for a typical call
    on CPU and on CUDA for float32, and on CPU for bfloat16), ``used`` (for each op, the backends that
    actually ran it in this process so far, eager calls) and ``checks`` (whether the debug checks are on).
    """
    from . import __version__

    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # triton is optional
        triton_version = None
    report: Dict[str, Any] = {
        "versions": {"fitnets_fast": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
                     "triton": triton_version, "platform": platform.platform()},
        "devices": {"cpu_threads": torch.get_num_threads(), "cpu_bf16": _cpu_bf16_convolutions(),
                    "cuda": torch.cuda.is_available(),
                    "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "backends": {name: (_backend.unavailable_reason(name) or "available") for name in _backend.BACKENDS},
        "ops": _backend.choices(),
        "used": _backend.used(),
        "checks": _checks.checks_enabled(),
    }
    if print_it:
        print(format_info(report))
    return report


def _cpu_bf16_convolutions() -> bool:
    """True when this CPU has the bfloat16 instructions oneDNN's bf16 convolutions need (AVX512-BF16, AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private binding: absent from some builds
        return False


def format_info(report: Dict[str, Any]) -> str:
    lines = ["fitnets_fast " + report["versions"]["fitnets_fast"]]
    lines += [f"  {k}: {v}" for k, v in report["versions"].items() if k != "fitnets_fast"]
    lines += [f"  {k}: {v}" for k, v in report["devices"].items()]
    lines.append("backends:")
    lines += [f"  {k}: {v}" for k, v in report["backends"].items()]
    lines.append("op -> backend (auto; float32 on cpu and cuda, bfloat16 on cpu):")
    lines += [f"  {op}: cpu={c['cpu']}, cuda={c['cuda']}, cpu_bf16={c['cpu_bf16']}" for op, c in report["ops"].items()]
    lines.append("op -> backends that ran it in this process:")
    lines += [f"  {op}: {', '.join(names) or 'not called'}" for op, names in report["used"].items()]
    lines.append(f"debug checks: {'on' if report['checks'] else 'off'}")
    return "\n".join(lines)
