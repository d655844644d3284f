"""The ``fitnets-fast`` command line: a reduced digits run end to end, eval, info and error handling."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from fitnets_fast import cli

REDUCED = ["--set", "teacher_max_epochs=2", "--set", "hint_max_epochs=1", "--set", "max_epochs=2",
           "--set", "speed_repeats=1"]


def test_train_reduced_digits_prints_table_and_writes_files(tmp_path):
    out = tmp_path / "run"
    script = shutil.which("fitnets-fast")                     # the installed console script
    exe = [script] if script else [sys.executable, "-m", "fitnets_fast"]
    proc = subprocess.run(exe + ["train", "--out", str(out), "--device", "cpu", "--quiet", "--seed", "0"] + REDUCED,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("row"))
    for word in ("acc(best)", "acc(last)", "params", "mults", "speed-up"):
        assert word in lines[header]
    rows = [line.split()[0] for line in lines[header + 2:header + 6]]
    assert rows == ["teacher", "backprop", "kd", "fitnets"]
    assert all("%" in line for line in lines[header + 2:header + 6])
    assert f"run folder: {out}" in proc.stdout
    assert proc.stderr == ""                                  # --quiet: no progress bars
    for f in ("config.json", "metrics.jsonl", "summary.json", "curves.png", "checkpoints/last.pt",
              "checkpoints/best.pt", "models/teacher.pt", "models/backprop.pt", "models/kd.pt", "models/fitnets.pt"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["preset"] == "digits" and config["max_epochs"] == 2 and config["student"] == "fitnet_digits"
    assert [r["row"] for r in summary["rows"]] == rows

    proc = subprocess.run(exe + ["eval", str(out / "models" / "fitnets.pt"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fitnets = next(r for r in summary["rows"] if r["row"] == "fitnets")
    assert json.loads(proc.stdout)["test_acc"] == fitnets["test_acc_best"]


def test_info_and_errors(capsys, tmp_path):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "presets:" in out and "digits" in out and "fitnet4" in out
    assert cli.main(["train", "--out", str(tmp_path / "x"), "--set", "learning_rate=1", "--quiet"]) == 1
    assert "unknown setting" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tmp_path / "missing"), "--quiet"]) == 1
    assert "not a run folder" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "none.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--preset", "imagenet"])


# -- errors instead of tracebacks, --set forms, Ctrl-C ----------------------------------------------------

TINY = {"dataset": "synthetic", "preprocessing": "none", "batch_size": 32, "teacher_max_epochs": 2,
        "teacher_lr_saturate": 2, "teacher_momentum_saturate": 2, "methods": [], "speed_repeats": 1,
        "speed_batch_size": 40, "num_threads": 1,
        "dataset_options": {"n_train": 96, "n_test": 40, "num_classes": 3, "image_shape": [1, 8, 8]}}
TINY_SET = ["--set"] + [f"{k}={json.dumps(v)}" for k, v in TINY.items()]


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_set_forms_seed_and_device(tmp_path, capsys):
    out = tmp_path / "r"
    # several pairs in one --set; seed and device through --set
    assert cli.main(["train", "--out", str(out), "--set", "seed=3", "device=cpu"] + TINY_SET) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["seed"] == 3 and config["device"] == "cpu" and config["teacher_max_epochs"] == 2
    err = capsys.readouterr().err
    assert "\r" not in err and "teacher/teacher 2/2" in err            # not a terminal: plain lines
    for argv, words in ((["--set", "preset=cifar10"], "--preset"),
                        (["--seed", "1", "--set", "seed=2"], "disagree"),
                        (["--device", "cpu", "--set", "device=cuda"], "disagree")):
        assert cli.main(["train", "--out", str(tmp_path / "x")] + argv) == 1
        assert words in _error_line(capsys)
    for argv in (["--preset", "digits"], ["--seed", "3"], ["--set", "lr=1"], ["--out", str(tmp_path / "y")]):
        assert cli.main(["train", "--resume", str(out)] + argv) == 1
        assert argv[0] in _error_line(capsys)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_ctrl_c_message_tells_whether_a_checkpoint_exists(tmp_path, capsys, monkeypatch):
    from fitnets_fast.run_files import RunDir

    real_save = RunDir.save_checkpoint
    limit = {"saves": 0, "done": 0}    # Ctrl-C at the save after `saves` successful ones

    def interrupted_save(self, state, best=None):
        if limit["done"] == limit["saves"]:
            raise KeyboardInterrupt
        limit["done"] += 1
        real_save(self, state, best)

    monkeypatch.setattr(RunDir, "save_checkpoint", interrupted_save)
    for saves, out in ((0, tmp_path / "first"), (1, tmp_path / "second")):
        limit.update(saves=saves, done=0)
        assert cli.main(["train", "--out", str(out), "--device", "cpu", "--quiet", "--seed", "0"] + TINY_SET) == 130
        err = capsys.readouterr().err
        if saves == 0:
            assert "before the first checkpoint: nothing was saved yet" in err and "intact" not in err
        else:
            assert "the last checkpoint is intact" in err
        assert f"--resume {out}" in err
    # The default several-seed run, its seeds in worker processes: the message names the parent folder.
    limit.update(saves=1, done=0)
    seeds_out = tmp_path / "seeds"
    assert cli.main(["train", "--out", str(seeds_out), "--device", "cpu", "--quiet"] + TINY_SET) == 130
    assert f"--resume {seeds_out}`" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(tmp_path / "first"), "--quiet"]) == 0
    assert "starting the run again from the beginning" in capsys.readouterr().err
    assert [r["epoch"] for r in RunDir(tmp_path / "first").read_metrics()] == [1, 2]
    assert cli.main(["train", "--resume", str(seeds_out), "--quiet"]) == 0
    assert "3 seeds (0, 1, 2)" in capsys.readouterr().out


def test_errors_are_one_line_and_leave_the_folder_consistent(tmp_path, capsys, monkeypatch):
    import errno
    import struct

    from fitnets_fast.run_files import RunDir, save_model

    # A CIFAR batch with a corrupt pickle frame.
    data = tmp_path / "data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (data / name).write_bytes(b"\x80\x04\x95" + struct.pack("<Q", 2 ** 63 + 5) + b"}.")
    out = tmp_path / "cifar"
    assert cli.main(["train", "--preset", "cifar10", "--data-dir", str(tmp_path / "data"), "--out", str(out),
                     "--device", "cpu", "--quiet"]) == 1
    assert "data_batch_1: cannot unpickle (OverflowError" in _error_line(capsys)
    assert RunDir(out).read_config()["config"]["preset"] == "cifar10" and not RunDir(out).last_path.exists()

    # --out naming a file; a device that is not cpu/cuda (refused before a folder is made).
    (tmp_path / "file").write_text("")
    assert cli.main(["train", "--out", str(tmp_path / "file"), "--quiet"]) == 1
    assert "is a file, not a folder" in _error_line(capsys)
    assert cli.main(["train", "--out", str(tmp_path / "mps"), "--device", "mps", "--quiet"]) == 1
    assert "device must be 'auto', 'cpu' or 'cuda[:N]'" in _error_line(capsys)
    assert not (tmp_path / "mps").exists()

    # A folder that cannot be written (root ignores file modes, so the OS error is raised here).
    real_mkdir = os.mkdir

    def denied(path, *args, **kwargs):
        if "readonly" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", denied)
    assert cli.main(["train", "--out", str(tmp_path / "readonly" / "run"), "--quiet"]) == 1
    assert "cannot write in" in _error_line(capsys)
    monkeypatch.undo()

    # A full disk at the second checkpoint: the first stays, and the run resumes once there is space.
    real_save = RunDir.save_checkpoint

    def full_disk(self, state, best=None):
        if state["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.last_path))
        real_save(self, state, best)

    monkeypatch.setattr(RunDir, "save_checkpoint", full_disk)
    out = tmp_path / "full"
    assert cli.main(["train", "--out", str(out), "--device", "cpu", "--quiet", "--seed", "0"] + TINY_SET) == 1
    assert f"No space left on device ({RunDir(out).last_path}); the run folder keeps its last checkpoint" in \
        _error_line(capsys)
    monkeypatch.undo()
    assert RunDir(out).load_checkpoint()["epoch"] == 1
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0
    assert "metrics.jsonl: dropped 1 record(s) written after the checkpoint" in capsys.readouterr().err
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [1, 2]

    # eval of a model file whose weights do not fit its model.
    model = RunDir(out).model_path("teacher")
    info = torch.load(model, weights_only=True)
    first = next(iter(info["state_dict"]))
    info["state_dict"][first] = info["state_dict"][first][:1]
    save_model(tmp_path / "bad.pt", model_name=info["model"], model_options=info["options"],
               num_classes=info["num_classes"], state_dict=info["state_dict"], data=info["data"], role="teacher")
    assert cli.main(["eval", str(tmp_path / "bad.pt"), "--device", "cpu"]) == 1
    assert "its weights do not fit a 'teacher_digits' model with 3 classes" in _error_line(capsys)
