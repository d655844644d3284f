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
        assert ops.backend_used("maxout", x, 2) == "reference"
    assert ops.backend_used("maxout", x, 2) == _backend.choices()["maxout"]["cpu"]
    with pytest.raises(ValueError, match="backend must be one of"):
        with fitnets_fast.use_backend("gpu"):
            pass


def test_auto_uses_reference_for_dtypes_the_cpp_kernels_do_not_take():
    assert ops.backend_used("maxout", torch.randn(2, 4).half(), 2) == "reference"
    g, h, w = torch.randn(2, 3, 5, 5).bfloat16(), torch.randn(2, 4, 4, 4).bfloat16(), torch.randn(8, 3, 2, 2).bfloat16()
    assert ops.backend_used("hint_loss", g, h, w, None, 2) == "reference"
    with pytest.raises(ValueError, match="float32 and float64"):
        ops.maxout(torch.randn(2, 4).half(), 2, backend="cpp")


@pytest.mark.skipif(_backend.module("cpp") is None, reason="C++ kernels not built")
def test_auto_picks_cpp_for_cpu_float_and_records_what_ran():
    for op in _backend.OPS:
        for dtype in (torch.float32, torch.float64):
            assert _backend.resolve(op, "auto", _backend.example_inputs(op, torch.device("cpu"), dtype)) == "cpp"
        bf16 = _backend.resolve(op, "auto", _backend.example_inputs(op, torch.device("cpu"), torch.bfloat16))
        assert bf16 == ("cpp" if op.startswith("maxout") else "reference")  # the losses run in float32 under autocast
    x = torch.randn(2, 6, 3, 3, requires_grad=True)
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.dtype) or t, lambda t: t):
        ops.maxout(x, 3)  # "auto" -> the fused kernel, which saves a uint8 winner index
    assert seen == [torch.uint8]
    ops.maxout(x, 3, backend="reference")
    assert _backend.used()["maxout"][:2] in (["cpp", "reference"], ["reference", "cpp"])
    assert fitnets_fast.info(print_it=False)["used"]["maxout"] == _backend.used()["maxout"]


def test_backend_used_checks_arguments_like_the_op():
    with pytest.raises(ValueError, match="not divisible by pieces=2"):
        ops.backend_used("maxout", torch.randn(2, 5, 3), 2)
    with pytest.raises(ValueError, match="op must be one of"):
        ops.backend_used("conv", torch.randn(2, 4))
    x = torch.randn(2, 4)
    assert ops.backend_used("maxout", x, 2, backend="reference") == "reference"
    assert fitnets_fast.ops.backend_used is ops.backend_used


def test_a_backend_named_for_a_device_it_cannot_run_says_why():
    """Without CUDA and outside the interpreter, triton refuses CPU tensors; cpp refuses non-CPU ones."""
    x = torch.randn(2, 4, device="meta")
    with pytest.raises(ValueError, match="the cpp backend runs on CPU tensors, got meta"):
        ops.backend_used("maxout", x, 2, backend="cpp")
    assert ops.backend_used("maxout", x, 2) == "reference"


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
