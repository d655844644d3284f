"""Backend dispatch and info(): what "auto" picks, forcing a backend, and the fallback without _C/triton."""
import json
import subprocess
import sys

import pytest
import torch

import fitnets_fast
from fitnets_fast import _backend, ops, reference


def test_info_reports_versions_devices_and_each_ops_backend(capsys):
    report = fitnets_fast.info()
    printed = capsys.readouterr().out
    assert report["versions"]["torch"] == torch.__version__
    assert set(report["ops"]) == set(_backend.OPS)
    for op in _backend.OPS:
        assert f"{op}: cpu={report['ops'][op]['cpu']}" in printed
    assert isinstance(report["devices"]["cpu_bf16"], bool)
    bf16 = {op: report["ops"][op]["cpu_bf16"] for op in _backend.OPS}
    assert bf16 == {"maxout": "cpp", "maxout_conv2d": "cpp", "maxout_linear": "cpp", "hint_loss": "reference",
                    "kd_loss": "reference"}


def test_use_backend_changes_what_auto_means_and_restores_it():
    x = torch.randn(3, 4, 5)
    with fitnets_fast.use_backend("reference"):
        assert _backend.resolve("maxout", "auto", x.device, x.dtype) == "reference"
    assert _backend.resolve("maxout", "auto", x.device, x.dtype) == _backend.choices()["maxout"]["cpu"]
    with pytest.raises(ValueError, match="backend must be one of"):
        with fitnets_fast.use_backend("gpu"):
            pass


def test_auto_uses_reference_for_dtypes_the_cpp_kernels_do_not_take():
    assert _backend.resolve("maxout", "auto", torch.device("cpu"), torch.float16) == "reference"
    assert _backend.resolve("hint_loss", "auto", torch.device("cpu"), torch.bfloat16) == "reference"
    with pytest.raises(ValueError, match="float32 and float64"):
        ops.maxout(torch.randn(2, 4).half(), 2, backend="cpp")


_NO_EXTENSIONS = """
import sys, json
sys.modules["fitnets_fast._C"] = None   # makes `import fitnets_fast._C` raise ImportError
sys.modules["triton"] = None
import torch, fitnets_fast
from fitnets_fast import _backend, ops, reference
x = torch.randn(2, 6, 3)
same = torch.equal(ops.maxout(x, 3), reference.maxout(x, 3))
try:
    ops.maxout(x, 3, backend="cpp"); error = ""
except ValueError as exc:
    error = str(exc)
print(json.dumps({"choices": _backend.choices(), "same": same, "error": error,
                  "backends": fitnets_fast.info(print_it=False)["backends"]}))
"""


def test_without_the_extension_or_triton_everything_falls_back_to_the_reference():
    out = subprocess.run([sys.executable, "-c", _NO_EXTENSIONS], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(c["cpu"] == "reference" for c in result["choices"].values())
    assert result["same"]
    assert "cpp backend is unavailable" in result["error"]
    assert result["backends"]["reference"] == "available"
    assert result["backends"]["cpp"] != "available" and result["backends"]["triton"] != "available"
