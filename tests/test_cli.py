"""The ``fitnets-fast`` command line: a reduced digits run end to end, eval, info and error handling."""
import json
import os
import shutil
import subprocess
import sys

import pytest

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
