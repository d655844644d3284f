"""Run folders never lose or mix results: atomic claims, locks, run ids, metrics repair, stops before the first
checkpoint, temporary files and file modes. Tiny synthetic runs (CPU, teacher only or one student row)."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from fitnets_fast import cli, trainer
from fitnets_fast.run_files import CheckpointError, RunDir, RunFolderError, RunInterrupted, load_model_file

TINY = dict(dataset="synthetic", preprocessing="none", device="cpu",
            dataset_options={"n_train": 96, "n_test": 40, "num_classes": 3, "image_shape": [1, 8, 8], "noise": 20.0},
            batch_size=32, teacher_max_epochs=2, teacher_lr_saturate=2, teacher_momentum_saturate=2, max_epochs=2,
            methods=[], speed_repeats=1, speed_batch_size=40, num_threads=1)
# (row, stage, epoch) of every record of a TINY run with one backprop row
EXPECTED = [("teacher", "teacher", 1), ("teacher", "teacher", 2), ("backprop", "ce", 1), ("backprop", "ce", 2)]


def _keys(run):
    return [(r["row"], r["stage"], r["epoch"]) for r in RunDir(run).read_metrics()]


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _python(code, *args, **kw):
    """A Python subprocess running ``code`` (argv: ``args``, then the TINY settings as JSON)."""
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args), json.dumps(TINY)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


# -- the folder machinery alone ---------------------------------------------------------------------------

def test_create_claims_a_fresh_locked_folder(tmp_path):
    a = RunDir.create(None, default=str(tmp_path / "runs" / "x"), settings={"config": {}})
    b = RunDir.create(None, default=str(tmp_path / "runs" / "x"), settings={"config": {}})
    assert (a.path.name, b.path.name) == ("x", "x-2")
    assert a.run_id != b.run_id and json.loads(a.run_path.read_text())["run_id"] == a.run_id
    with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
        RunDir(a.path).claim()
    with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
        RunDir.create(str(a.path), default="unused", settings={})
    a.release()
    with pytest.raises(ValueError, match="already holds a run"):
        RunDir.create(str(a.path), default="unused", settings={})
    again = RunDir(a.path)
    again.claim()            # free again: a resume may lock it
    again.release()
    with pytest.raises(RunFolderError, match="is a file"):
        RunDir.create(str(a.run_path), default="unused", settings={})


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_follow_the_umask_and_tmp_leftovers_are_removed(tmp_path, umask):
    old = os.umask(umask)
    try:
        run = RunDir.create(str(tmp_path / "r"), default="unused", settings={})
        run.save_checkpoint({"task": 0, "epoch": 1}, best={"epoch": 1})
        run.write_json(run.summary_path, {})
        run.append_metrics({"epoch": 1})
    finally:
        os.umask(old)
    for f in (run.run_path, run.last_path, run.best_path, run.summary_path, run.metrics_path, run.lock_path):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
    run.release()
    leftovers = [run.path / ".summary.json.1a2b.tmp", run.last_path.parent / ".last.pt.3c4d.tmp"]
    for f in leftovers:
        f.write_bytes(b"partial")
    assert sorted(RunDir(run.path).claim()) == sorted(leftovers)
    assert not any(f.exists() for f in leftovers) and run.last_path.is_file()


# -- resumes ----------------------------------------------------------------------------------------------

def test_foreign_checkpoint_is_refused_before_any_file_changes(tmp_path):
    trainer.train("digits", out_dir=str(tmp_path / "a"), quiet=True, **TINY)
    trainer.train("digits", out_dir=str(tmp_path / "b"), quiet=True, **{**TINY, "teacher_max_epochs": 1})
    a, b = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    a.last_path.write_bytes(b.last_path.read_bytes())
    before = {f: f.read_bytes() for f in a.path.rglob("*") if f.is_file()}
    with pytest.raises(CheckpointError, match="belongs to another run"):
        trainer.train(resume=str(a.path), quiet=True)
    assert {f: f.read_bytes() for f in a.path.rglob("*") if f.is_file()} == before


def test_partial_metrics_line_is_dropped_on_resume(tmp_path, capsys):
    def stop(rec):
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    out = tmp_path / "p"
    with pytest.raises(RunInterrupted) as info:
        trainer.train("digits", out_dir=str(out), quiet=True, callback=stop, **TINY)
    assert info.value.has_checkpoint and info.value.run_dir == str(out)
    partial = '{"row": "teacher", "stage": "tea'             # an append cut short by a full disk
    with open(RunDir(out).metrics_path, "a") as f:
        f.write(partial)
    trainer.train(resume=str(out), quiet=True)
    assert f"dropped a partial last line ({len(partial)} bytes)" in capsys.readouterr().err
    assert _keys(out) == EXPECTED[:2]


def test_kill_in_the_first_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    # Killed while writing the first checkpoint: the epoch's metrics record exists, last.pt does not, and
    # the atomic writer's temporary file is left behind.
    code = ("import json, os, signal, sys\n"
            "from fitnets_fast import run_files, trainer\n"
            "def die(self, state, best=None):\n"
            "    run_files.atomic_write(self.last_path, lambda f: (f.write(b'half'), os.kill(os.getpid(), 9)))\n"
            "run_files.RunDir.save_checkpoint = die\n"
            "trainer.train('digits', out_dir=sys.argv[1], quiet=True, **json.loads(sys.argv[2]))\n")
    out = tmp_path / "killed"
    proc = _python(code, out)
    proc.communicate(timeout=900)
    assert proc.returncode == -9
    run = RunDir(out)
    assert not run.last_path.exists() and len(run.read_metrics()) == 1
    assert list(run.last_path.parent.glob(".last.pt.*.tmp"))
    resumed = trainer.train(resume=str(out), quiet=True)
    err = capsys.readouterr().err
    assert "has no checkpoint: starting the run again from the beginning" in err
    assert "dropped 1 record(s) written after the checkpoint" in err
    assert not list(run.last_path.parent.glob("*.tmp"))
    full = trainer.train("digits", out_dir=str(tmp_path / "full"), quiet=True, **TINY)
    assert _strip(run.read_metrics()) == _strip(RunDir(tmp_path / "full").read_metrics())
    a = load_model_file(run.model_path("teacher"))["state_dict"]
    b = load_model_file(RunDir(tmp_path / "full").model_path("teacher"))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert resumed["rows"][0]["test_acc_best"] == full["rows"][0]["test_acc_best"]


def test_resume_while_the_run_is_training_is_refused(tmp_path, capsys):
    code = ("import json, sys, time\n"
            "from pathlib import Path\n"
            "from fitnets_fast import trainer\n"
            "gate = Path(sys.argv[2])\n"
            "def hold(rec):\n"
            "    Path(sys.argv[2] + '.started').touch()\n"
            "    while not gate.exists():\n"
            "        time.sleep(0.05)\n"
            "trainer.train('digits', out_dir=sys.argv[1], quiet=True, callback=hold, **json.loads(sys.argv[3]))\n")
    out, gate = tmp_path / "busy", tmp_path / "gate"
    proc = _python(code, out, gate)
    try:
        deadline = time.monotonic() + 900
        while not (tmp_path / "gate.started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert cli.main(["train", "--resume", str(out), "--quiet"]) == 1
        assert f"in use by process {proc.pid}" in capsys.readouterr().err
        assert cli.main(["train", "--out", str(out), "--quiet"]) == 1
        assert f"in use by process {proc.pid}" in capsys.readouterr().err
    finally:
        gate.touch()
        _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert _keys(out) == EXPECTED[:2]


def test_two_launches_in_the_same_second_get_two_complete_folders(tmp_path):
    # Both processes get the same default name (as when started in the same second); stderr is a pipe,
    # so progress comes as plain lines, one per epoch.
    code = ("import sys\n"
            "from fitnets_fast import cli, trainer\n"
            "trainer.default_out_dir = lambda preset: 'runs/same-second'\n"
            "sys.exit(cli.main(sys.argv[1:-1]))\n")
    args = ["train", "--device", "cpu", "--seed", "0", "--set"] + [f"{k}={json.dumps(v)}" for k, v in
                                                    {**TINY, "methods": ["backprop"]}.items()]
    procs = [_python(code, *args, cwd=tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    folders = [tmp_path / "runs" / "same-second", tmp_path / "runs" / "same-second-2"]
    printed = sorted(line for out, _ in outputs for line in out.splitlines() if line.startswith("run folder: "))
    assert printed == [f"run folder: {f.relative_to(tmp_path)}" for f in folders]
    ids = set()
    for f in folders:
        assert _keys(f) == EXPECTED, f
        summary = json.loads((f / "summary.json").read_text())
        assert summary["run_dir"] == str(f.relative_to(tmp_path))
        assert RunDir(f).load_checkpoint()["run_id"] == RunDir(f).run_id
        ids.add(RunDir(f).run_id)
    assert len(ids) == 2
    for _, err in outputs:
        assert "\r" not in err and "\x1b" not in err
        lines = [line.split()[:2] for line in err.splitlines() if "test_acc=" in line]
        assert lines == [["teacher/teacher", "1/2"], ["teacher/teacher", "2/2"],
                         ["backprop/ce", "1/2"], ["backprop/ce", "2/2"]], err
