"""fitnets_fast._alloc: reuse of large CPU output buffers (never one that is still referenced)."""
import pytest
import torch

from fitnets_fast import _alloc, _backend, ops, reference

MIB = 1 << 20
needs_cpp = pytest.mark.skipif(_backend.module("cpp") is None, reason="C++ kernels not built")


def _storage_ptr(t):
    return t.untyped_storage().data_ptr()


def test_idle_buffer_is_handed_out_again_busy_one_never():
    like = torch.empty(1)
    a = _alloc.empty((MIB // 4 + 3,), dtype=torch.float32, device="cpu", like=like)
    b = _alloc.empty((MIB // 4 + 3,), dtype=torch.float32, device="cpu", like=like)
    assert _storage_ptr(a) != _storage_ptr(b)  # a is still referenced
    view = a[5:]
    ptr = _storage_ptr(a)
    del a
    c = _alloc.empty((MIB // 4 + 3,), dtype=torch.float32, device="cpu", like=like)
    assert _storage_ptr(c) != ptr  # a view keeps the storage busy
    del view
    d = _alloc.empty((MIB // 4 + 3,), dtype=torch.float32, device="cpu", like=like)
    assert _storage_ptr(d) == ptr
    assert d.shape == (MIB // 4 + 3,) and d.is_contiguous() and not d.requires_grad
    versions = d._version, c._version
    d[0] = 7  # each hand-out is its own tensor, with its own version counter
    assert (d._version, c._version) == (versions[0] + 1, versions[1])


def test_small_buffers_fake_tensors_and_subclasses_are_not_pooled():
    def pooled(t):
        return any(s.data_ptr() == _storage_ptr(t) for s in _alloc._pool.storages.values())

    small = _alloc.empty((10,), dtype=torch.float32, device="cpu", like=torch.empty(1))
    big = _alloc.empty((MIB,), dtype=torch.uint8, device="cpu", like=torch.empty(1))
    from_param = _alloc.empty((MIB,), dtype=torch.uint8, device="cpu", like=torch.nn.Parameter(torch.empty(1)))
    assert pooled(big) and not pooled(small) and not pooled(from_param)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.empty(4))
        out = _alloc.empty((MIB,), dtype=torch.float32, device="cpu", like=fake)
        assert type(out).__name__ == "FakeTensor"


def test_pool_limit_evicts_idle_storages_only():
    pool = _alloc._StoragePool(limit_bytes=3 * MIB)
    kept = torch.empty(0).set_(pool.take(2 * MIB))
    pool.take(MIB)             # idle at once (nobody holds it)
    assert pool.bytes == 3 * MIB
    pool.take(2 * MIB)         # over the limit: the idle 1 MiB goes; the busy 2 MiB stays
    assert pool.bytes <= 3 * MIB
    assert any(s.data_ptr() == kept.untyped_storage().data_ptr() for s in pool.storages.values())
    assert _alloc._StoragePool(limit_bytes=0).take(MIB).nbytes() == MIB


@pytest.mark.parametrize("value", ["lots", "1.5", "-1", " ", "2e3", "\u0661"])
def test_bad_pool_limit_setting(monkeypatch, value):
    monkeypatch.setenv("FITNETS_FAST_BUFFER_POOL_MB", value)
    with pytest.raises(ValueError, match="FITNETS_FAST_BUFFER_POOL_MB must be a whole non-negative number of MiB"):
        _alloc._pool_limit_bytes()


def test_pool_limit_setting_parses_whole_mib(monkeypatch):
    monkeypatch.setenv("FITNETS_FAST_BUFFER_POOL_MB", "0")
    assert _alloc._pool_limit_bytes() == 0
    monkeypatch.setenv("FITNETS_FAST_BUFFER_POOL_MB", "64")
    assert _alloc._pool_limit_bytes() == 64 * MIB


@pytest.mark.parametrize("variable,value", [("FITNETS_FAST_BUFFER_POOL_MB", "1.5"), ("FITNETS_FAST_CHECKS", "yes")])
def test_a_malformed_setting_stops_the_import_instead_of_changing_the_backend(variable, value):
    """A bad value used to make the cpp backend fail to import, so every op quietly ran the reference."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, **{variable: value})
    proc = subprocess.run([sys.executable, "-c", "import fitnets_fast"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"ValueError: {variable} must be" in proc.stderr


@needs_cpp
def test_training_steps_on_reused_buffers_match_the_reference():
    """Three steps (on different inputs) of a maxout conv stack whose buffers are reused from step to step,
    against the reference: outputs and gradients of every step, and step 2's activations, held by the caller
    through step 3, unchanged."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 33, 31, dtype=torch.float64)
    w1, b1 = torch.randn(64 * 2, 3, 3, 3, dtype=torch.float64), torch.randn(128, dtype=torch.float64)
    w2 = torch.randn(16 * 3, 64, 3, 3, dtype=torch.float64)
    held = []
    for step in range(3):
        grads = []
        for backend in ["cpp", "reference"]:
            params = [p.clone().requires_grad_() for p in (w1, b1, w2)]
            h = ops.maxout_conv2d(x * (step + 1), params[0], params[1], 2, 1, 1, backend=backend)
            y = ops.maxout_conv2d(h, params[2], None, 3, 1, 1, backend=backend)
            (y * y.detach().sin()).sum().backward()
            grads.append([p.grad for p in params] + [y.detach()])
            if step == 1:
                held.append(h)  # keep one step's activations alive: the next step must not write over them
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want)
    torch.testing.assert_close(held[0], reference.maxout_conv2d(x * 2, w1, b1, 2, 1, 1))
