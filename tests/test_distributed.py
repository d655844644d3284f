"""Data-parallel training (torchrun / DistributedDataParallel, gloo on CPU): two processes against one, a
two-process run resumed by one process, the torchrun command line, a lost process; and the run settings
``amp`` (autocast, grad scaler) and ``compile``.

Every multi-process test runs on 127.0.0.1 with a free port and ``num_threads=1`` per process.
"""
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from fitnets_fast import distributed, methods, models, trainer
from fitnets_fast.distributed import DistributedFailure, World
from fitnets_fast.run_files import RunDir, load_model_file, save_model

B = 32   # the global batch
TINY = dict(dataset="synthetic", preprocessing="none", device="cpu", batch_size=B,
            dataset_options={"n_train": 256, "n_test": 64, "num_classes": 4, "image_shape": [1, 8, 8], "noise": 20.0},
            hint_max_epochs=2, max_epochs=3, lambda_start=1, lambda_saturate=4, lambda_final=2.0,
            speed_repeats=1, speed_batch_size=32, num_threads=1, methods=["fitnets"])
# Float tolerance: two processes sum in another order than one, and RMSProp's per-parameter normalisation
# amplifies the float32 rounding of small gradients (measured after 50 steps: at most 1.2e-5 on weights of
# size ~0.2); a missing gradient average or a wrong shard moves weights by ~lr = 5e-3 per step.
RTOL, ATOL = 1e-4, 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_env(rank: int, size: int, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCH_VARIABLES}
    env.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _teacher_file(path: Path) -> str:
    """An (untrained) digits teacher saved as a model file, so that every run skips the teacher stage."""
    torch.manual_seed(0)
    model = models.build("teacher_digits", 4)
    save_model(path, model_name="teacher_digits", model_options={}, num_classes=4, state_dict=model.state_dict(),
               data={}, role="teacher")
    return str(path)


def _record_batches(log: list, patch=setattr) -> None:
    """Make the methods of the fitnets row (``Hints``, ``KD``) append each training batch's example ids to
    ``log`` (``patch``: ``setattr`` or a pytest ``monkeypatch.setattr``)."""
    for cls in (methods.Hints, methods.KD):
        def loss(self, xb, yb, ids, _real=cls.loss):
            log.append(ids.tolist())
            return _real(self, xb, yb, ids)
        patch(cls, "loss", loss)


# -- helpers of World, no processes --------------------------------------------------------------------------

def test_world_shards_rows_and_batch_checks():
    one, r0, r1 = World(), World(0, 2), World(1, 2)
    assert not one.distributed and one.is_main and r0.is_main and not r1.is_main and r1.distributed
    x, ids = torch.arange(12.0).view(6, 2), torch.arange(6)
    (a,) = r0.shard([(x, ids)])
    (b,) = r1.shard([(x, ids)])
    assert a[1].tolist() == [0, 1, 2] and b[1].tolist() == [3, 4, 5] and torch.equal(b[0], x[3:])
    assert [t.tolist() for t in next(one.shard([(x, ids)]))] == [x.tolist(), ids.tolist()]
    shares = [World(r, 3).rows(10) for r in range(3)]
    assert [list(range(10))[s] for s in shares] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert r1.local_batch_size(64) == 32 and one.local_batch_size(7) == 7
    with pytest.raises(ValueError, match="batch_size 33 is not divisible by the number of processes 2"):
        r0.local_batch_size(33)
    with pytest.raises(ValueError, match="not divisible"):
        list(r1.shard([(x[:5], ids[:5])]))
    assert one.sum([torch.tensor(2.0), torch.tensor(3)]).tolist() == [2.0, 3.0]
    assert r1.device(torch.device("cpu")) == torch.device("cpu")
    assert World(1, 2, local_rank=1).device(torch.device("cuda")) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="'cuda' \\(or 'auto'\\) under torchrun"):
        r0.device(torch.device("cuda", 0))


def test_guard_names_the_rank_only_for_lost_peers():
    lost = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")
    with pytest.raises(DistributedFailure, match="rank 1 of 2: lost contact with another process") as info:
        with World(1, 2, timeout_s=7).guard():
            raise lost
    assert "dist_timeout=7 s" in str(info.value) and info.value.__cause__ is lost
    with pytest.raises(ZeroDivisionError):          # not a communication error: unchanged
        with World(1, 2).guard():
            raise ZeroDivisionError
    with pytest.raises(RuntimeError, match="Connection reset") as info:   # one process: unchanged
        with World().guard():
            raise lost
    assert type(info.value) is RuntimeError


def test_launch_reads_torchrun_variables(monkeypatch):
    for name in distributed.LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with distributed.launch(torch.device("cpu"), timeout_s=5) as world:
        assert world == World(timeout_s=5.0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with distributed.launch(torch.device("cpu")) as world:
        assert not world.distributed
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT is not"):
        with distributed.launch(torch.device("cpu")):
            pass
    for name, value in (("RANK", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="inconsistent launch: RANK=2, WORLD_SIZE=2"):
        with distributed.launch(torch.device("cpu")):
            pass
    with pytest.raises(ValueError, match="timeout_s must be a number > 0"):
        with distributed.launch(torch.device("cpu"), timeout_s=0):
            pass


def test_a_process_that_never_joins_times_out_with_a_message(monkeypatch):
    for name, value in _launch_env(0, 2, _free_port()).items():
        monkeypatch.setenv(name, value)
    start = time.monotonic()
    with pytest.raises(DistributedFailure, match="rank 0 of 2: the other processes did not all join at 127.0.0.1"):
        with distributed.launch(torch.device("cpu"), timeout_s=1):
            pass
    assert time.monotonic() - start < 10
    assert not torch.distributed.is_initialized()


# -- two processes against one ------------------------------------------------------------------------------

class _Stop(BaseException):
    pass


def _spawned_run(rank: int, port: int, out_dir: str, teacher: str, log_dir: str) -> None:
    """One process of a two-process run that stops after the first epoch of stage 2 (fitnets/kd); it logs
    the ids of every batch and the DDP wrappers still alive when each stage starts."""
    os.environ.update(_launch_env(rank, 2, port))
    log: list = []
    _record_batches(log)
    live = []
    real_init = methods.Method.__init__

    def init(self, *args, **kwargs):
        live.append(sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects()))
        real_init(self, *args, **kwargs)

    methods.Method.__init__ = init

    def stop(rec):
        if (rec["stage"], rec["epoch"]) == ("kd", 1):
            raise _Stop

    try:
        trainer.train("digits", out_dir=out_dir, teacher_checkpoint=teacher, callback=stop, quiet=True, **TINY)
    except _Stop:
        pass
    Path(log_dir, f"rank{rank}.json").write_text(json.dumps({"ids": log, "live_ddp": live}))


def _close(a: float, b: float) -> bool:
    return a == b or (a is not None and b is not None and abs(a - b) <= ATOL + RTOL * abs(b))


def _same_records(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            if k == "seconds":
                continue
            assert (_close(g[k], w[k]) if isinstance(w[k], float) else g[k] == w[k]), (k, g, w)


def test_two_processes_match_one_and_resume_as_one(tmp_path, monkeypatch):
    teacher = _teacher_file(tmp_path / "teacher.pt")
    # One process, uninterrupted, keeping the student after each epoch and the ids of every batch.
    single_log: list = []
    _record_batches(single_log, monkeypatch.setattr)
    snapshots = {}
    full_dir = tmp_path / "one"

    def keep(rec):
        snapshots[(rec["stage"], rec["epoch"])] = RunDir(full_dir).load_checkpoint()["student"]

    trainer.train("digits", out_dir=str(full_dir), teacher_checkpoint=teacher, callback=keep, quiet=True, **TINY)
    monkeypatch.undo()

    # Two processes with the same global batch, stopped after stage 2's first epoch.
    two_dir = tmp_path / "two"
    mp.start_processes(_spawned_run, args=(_free_port(), str(two_dir), teacher, str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert logs[0]["live_ddp"] == [0, 0]     # hints, kd: the previous stage's wrapper (and its hooks) is gone
    logs = [log["ids"] for log in logs]
    assert len(logs[0]) == len(logs[1]) == len(single_log) * 3 // 5   # 2 hint + 1 kd epochs of 2 + 3
    for a, b, whole in zip(*logs, single_log):   # each process trains on its half of the same global batch
        assert len(a) == len(b) == B // 2 and a + b == whole

    run = RunDir(two_dir)
    assert json.loads(run.config_path.read_text())["world_size"] == 2
    ck = run.load_checkpoint()
    assert (ck["task"], ck["epoch"]) == (2, 1)
    want = snapshots[("kd", 1)]
    for k, v in ck["student"].items():
        torch.testing.assert_close(v, want[k], rtol=RTOL, atol=ATOL, msg=k)
    one_records = RunDir(full_dir).read_metrics()
    _same_records(run.read_metrics(), one_records[:len(run.read_metrics())])   # rank 0 alone wrote them

    # The two-process run continued by one process ends like the uninterrupted one.
    resumed = trainer.train(resume=str(two_dir), quiet=True)
    assert resumed["world_size"] == 1
    _same_records(run.read_metrics(), one_records)
    a = load_model_file(run.model_path("fitnets"))["state_dict"]
    b = load_model_file(RunDir(full_dir).model_path("fitnets"))["state_dict"]
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL, msg=k)


# -- the command line under torchrun, and failures --------------------------------------------------------

def _cli_args(out: Path, **settings) -> list:
    cfg = dict(TINY, **settings)
    cfg.pop("device")
    return ["train", "--out", str(out), "--device", "cpu", "--quiet"] + [
        a for k, v in cfg.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def _torchrun(command: list) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 COMMAND`` on 127.0.0.1."""
    env = _launch_env(0, 1, 0)
    for name in distributed.LAUNCH_VARIABLES:
        env.pop(name)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(_free_port())] + command,
                          capture_output=True, text=True, timeout=120, env=env)


def test_torchrun_command_line_and_batch_size_error(tmp_path):
    """``torchrun -m fitnets_fast train`` trains the teacher and a student with two processes; the console
    script under torchrun reports a batch size that the processes do not divide."""
    out = tmp_path / "run"
    proc = _torchrun(["-m", "fitnets_fast"] + _cli_args(out, channels_last=True, methods=["backprop"],
                                                        teacher_max_epochs=2, max_epochs=2))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()                                   # rank 0 alone prints the table
    assert sum(line.startswith("row ") for line in lines) == 1 and lines.count(f"run folder: {out}") == 1
    saved = json.loads((out / "config.json").read_text())
    assert saved["world_size"] == 2 and saved["config"]["channels_last"] is True
    assert {k: saved["config"][k] for k in ("amp", "compile")} == {"amp": "none", "compile": False}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and [r["row"] for r in summary["rows"]] == ["teacher", "backprop"]
    assert len(RunDir(out).read_metrics()) == 4                      # one record per epoch, not one per process

    script = shutil.which("fitnets-fast")
    command = ["--no-python", script] if script else ["-m", "fitnets_fast"]
    proc = _torchrun(command + _cli_args(tmp_path / "bad", batch_size=33))
    assert proc.returncode != 0
    assert "error: batch_size 33 is not divisible by the number of processes 2" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_lost_process_makes_the_other_exit_with_a_message(tmp_path, sig):
    """A killed process closes its connections: the other fails at its next collective; a hung one (stopped)
    makes the other's next collective time out after ``dist_timeout``."""
    teacher = _teacher_file(tmp_path / "teacher.pt")
    out = tmp_path / "run"
    timeout = 5
    args = _cli_args(out, teacher_checkpoint=teacher, methods=["backprop"], max_epochs=10000, patience=None,
                     dist_timeout=timeout)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "fitnets_fast"] + args, env=_launch_env(r, 2, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:   # both are training
            assert procs[0].poll() is None, procs[0].communicate()
            time.sleep(0.1)
        procs[1].send_signal(sig)
        lost = time.monotonic()
        _, err = procs[0].communicate(timeout=timeout + 30)
        waited = time.monotonic() - lost
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert procs[0].returncode == 1
    assert "error: rank 0 of 2: lost contact with another process" in err
    if sig == signal.SIGKILL:   # within the timeout (measured: ~1 s, most of it the process's exit)
        assert waited < timeout
    else:                       # the timeout itself, then the exit
        assert timeout - 0.5 <= waited < timeout + 3 and "Timed out" in err


# -- mixed precision and torch.compile (one process) --------------------------------------------------------

def test_ops_follow_the_autocast_policy_of_their_aten_counterparts():
    from fitnets_fast import ops

    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 3, 6, 6, generator=g), torch.randn(8, 3, 3, 3, generator=g), torch.randn(8, generator=g)
    logits, target = torch.randn(4, 5, generator=g, dtype=torch.bfloat16), torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv = ops.maxout_conv2d(x, w, b, 2, padding=1)                      # like conv2d: the autocast dtype
        kd = ops.kd_loss(logits, logits.flip(0), target)                     # like cross_entropy: float32
    assert conv.dtype == torch.bfloat16 and kd.dtype == torch.float32
    torch.testing.assert_close(conv, ops.maxout_conv2d(x.bfloat16(), w.bfloat16(), b.bfloat16(), 2, padding=1))
    torch.testing.assert_close(kd, ops.kd_loss(logits.float(), logits.flip(0).float(), target))


def test_amp_autocasts_and_fp16_resumes_exactly(tmp_path, monkeypatch):
    """``amp`` runs the training forward under autocast (here on CPU, which supports both dtypes); the fp16
    grad scaler's state is checkpointed, so an interrupted fp16 run resumes exactly."""
    teacher = _teacher_file(tmp_path / "teacher.pt")
    settings = dict(TINY, teacher_checkpoint=teacher, quiet=True)
    dtypes = set()
    for cls in (methods.Hints, methods.KD):
        def loss(self, xb, yb, ids, _real=cls.loss):
            logits, losses = _real(self, xb, yb, ids)
            dtypes.add((self.stage, logits.dtype if logits is not None else None,
                        torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
            return logits, losses
        monkeypatch.setattr(cls, "loss", loss)
    trainer.train("digits", out_dir=str(tmp_path / "bf16"), amp="bf16", **settings)
    assert dtypes == {("hints", None, torch.bfloat16), ("kd", torch.bfloat16, torch.bfloat16)}
    monkeypatch.undo()

    full = tmp_path / "fp16"
    trainer.train("digits", out_dir=str(full), amp="fp16", **settings)
    scaler = RunDir(full).load_checkpoint()["scaler"]    # it ran: steps since the last change of scale, or a
    assert scaler["_growth_tracker"] > 0 or scaler["scale"] < 2.0 ** 16   # backoff from the initial 2**16

    def stop(rec):
        if (rec["stage"], rec["epoch"]) == ("kd", 2):
            raise _Stop

    cut = tmp_path / "fp16-cut"
    with pytest.raises(_Stop):
        trainer.train("digits", out_dir=str(cut), amp="fp16", callback=stop, **settings)
    trainer.train(resume=str(cut), quiet=True)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(cut).read_metrics()]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(full).read_metrics()]
    assert json.loads((cut / "config.json").read_text())["config"]["amp"] == "fp16"


def test_compile_wraps_the_student_of_the_ce_and_kd_stages(tmp_path, monkeypatch):
    """``compile=True`` calls ``torch.compile`` on the student of the ce and kd stages (hints and one-stage run
    eagerly); traced with dynamo's "eager" backend here (inductor's C++ build would take ~30 s on CI), the
    metrics equal the uncompiled run's."""
    teacher = _teacher_file(tmp_path / "teacher.pt")
    settings = dict(TINY, teacher_checkpoint=teacher, quiet=True, methods=["backprop", "fitnets"], max_epochs=2)
    compiled = []
    real = torch.nn.Module.compile

    def compile_eager(self, *args, **kwargs):
        compiled.append(self)
        return real(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eager)
    trainer.train("digits", out_dir=str(tmp_path / "compiled"), compile=True, **settings)
    trainer.train("digits", out_dir=str(tmp_path / "eager"), **settings)
    assert len(compiled) == 2 and all(isinstance(m, models.MaxoutNet) for m in compiled)   # backprop/ce, fitnets/kd
    _same_records(RunDir(tmp_path / "compiled").read_metrics(), RunDir(tmp_path / "eager").read_metrics())
