"""``fitnets_fast.info()``: versions, devices and the backend each op uses."""
from __future__ import annotations

import platform
import sys
from typing import Any, Dict

import torch

from . import _backend


def info(print_it: bool = True) -> Dict[str, Any]:
    """Collect (and by default print) versions, the compute devices and each op's backend choice.

    Returns a dict with keys ``versions``, ``devices``, ``backends`` (availability, with the reason when
    one is unavailable) and ``ops`` (for each op, the backend "auto" picks on CPU and on CUDA, float32).
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
        "devices": {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                    "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "backends": {name: (_backend.unavailable_reason(name) or "available") for name in _backend.BACKENDS},
        "ops": _backend.choices(),
    }
    if print_it:
        print(format_info(report))
    return report


def format_info(report: Dict[str, Any]) -> str:
    lines = ["fitnets_fast " + report["versions"]["fitnets_fast"]]
    lines += [f"  {k}: {v}" for k, v in report["versions"].items() if k != "fitnets_fast"]
    lines += [f"  {k}: {v}" for k, v in report["devices"].items()]
    lines.append("backends:")
    lines += [f"  {k}: {v}" for k, v in report["backends"].items()]
    lines.append("op -> backend (auto, float32):")
    lines += [f"  {op}: cpu={c['cpu']}, cuda={c['cuda']}" for op, c in report["ops"].items()]
    return "\n".join(lines)
