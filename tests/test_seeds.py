"""Several seeds of a run: the aggregate (mean, sample std, n), per-seed folders and their resume, the ± table,
the shared teacher (tiny synthetic runs on CPU)."""
import json
import math
import os

import pytest

import fitnets_fast
from fitnets_fast import cli, seeds, trainer
from fitnets_fast.run_files import RunDir, RunFolderError, RunInterrupted, format_table

TINY = dict(dataset="synthetic", preprocessing="none", device="cpu", quiet=True,
            dataset_options={"n_train": 192, "n_test": 60, "num_classes": 4, "image_shape": [1, 8, 8], "noise": 20.0},
            batch_size=32, teacher_max_epochs=2, teacher_lr_saturate=2, teacher_momentum_saturate=2,
            hint_max_epochs=1, max_epochs=2, lambda_start=1, lambda_saturate=2, speed_repeats=1,
            speed_batch_size=60, num_threads=1)
ROWS = ["teacher", "backprop", "kd", "fitnets"]


def _seed_rows(run_dir, seed):
    """Each row of one seed's own summary.json, by row name."""
    summary = json.loads((run_dir / f"seed-{seed}" / "summary.json").read_text())
    return {r["row"]: r for r in summary["rows"]}


def test_one_thread_seeds_run_up_to_two_per_core(monkeypatch):
    monkeypatch.setattr(seeds, "_cores", lambda: 2)
    assert [seeds._default_workers(n, 1) for n in (1, 3, 4, 9)] == [1, 3, 4, 4]
    assert [seeds._default_workers(n, None) for n in (1, 3)] == [1, 2]
    assert seeds._default_workers(3, 2) == 2


def test_aggregate_is_mean_sample_std_and_n():
    a = seeds.aggregate([0.9, 0.8, 0.6])
    assert a["n"] == 3 and a["values"] == [0.9, 0.8, 0.6] and (a["min"], a["max"]) == (0.6, 0.9)
    assert a["mean"] == pytest.approx(2.3 / 3)
    assert a["std"] == pytest.approx(math.sqrt(((0.9 - 2.3 / 3) ** 2 + (0.8 - 2.3 / 3) ** 2 + (0.6 - 2.3 / 3) ** 2) / 2))
    one = seeds.aggregate([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and one["std"] is None
    with pytest.raises(ValueError):
        seeds.aggregate([])
    assert seeds.parse_seeds("0,1,7") == [0, 1, 7]
    for bad in ("0,0", "a,1", "-1", ""):
        with pytest.raises(ValueError):
            seeds.parse_seeds(bad)


def test_seeds_aggregate_resume_and_table(tmp_path):
    """Three seeds in two worker processes; the same run interrupted in seed 1 (seed 2 not started) and
    resumed in this process ends with the same per-seed numbers; the parent's aggregate is computed from them."""
    full = tmp_path / "full"
    summary = fitnets_fast.train("digits", out_dir=str(full), seeds=[0, 1, 2], workers=2, **TINY)
    assert summary["seeds"] == [0, 1, 2] and [r["row"] for r in summary["rows"]] == ROWS
    for s in (0, 1, 2):   # every seed's folder is a complete run of its own
        run = RunDir(full / f"seed-{s}")
        assert json.loads(run.config_path.read_text())["config"]["seed"] == s
        for row in ROWS:
            assert run.model_path(row).is_file()
    per_seed = {s: _seed_rows(full, s) for s in (0, 1, 2)}
    assert per_seed[0]["kd"]["test_acc_last"] != per_seed[1]["kd"]["test_acc_last"] or \
        per_seed[0]["teacher"]["test_acc_best"] != per_seed[1]["teacher"]["test_acc_best"]   # the seeds differ
    for r in summary["rows"]:
        assert r["n"] == 3
        for key in ("test_acc_best", "test_acc_last"):
            values = [per_seed[s][r["row"]][key] for s in (0, 1, 2)]
            mean = sum(values) / 3
            assert r[key]["values"] == values
            assert r[key]["mean"] == pytest.approx(mean, abs=1e-12)
            assert r[key]["std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 2), abs=1e-12)
    assert json.loads((full / "summary.json").read_text())["rows"] == summary["rows"]
    assert (full / "curves.png").stat().st_size > 0 and (full / "seeds.json").is_file()

    table = format_table(summary)
    assert "3 seeds (0, 1, 2); teacher: each seed trains its own teacher" in table
    kd = next(line for line in table.splitlines() if line.startswith("kd "))
    k = summary["rows"][2]["test_acc_best"]
    assert f"{100 * k['mean']:.2f} ± {100 * k['std']:.2f}%" in kd and kd.split()[-5] == "3"   # the n column

    cut = tmp_path / "cut"
    seen = []

    def stop(record):
        seen.append(record["row"])
        if len(seen) > 12 and record["row"] == "kd":   # inside seed 1 (a seed makes 2 + 2 + 2 + 1 + 2 records)
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as stopped:      # names the parent folder: its resume finishes every seed
        fitnets_fast.train("digits", out_dir=str(cut), seeds=[0, 1, 2], callback=stop, **TINY)
    assert stopped.value.run_dir == str(cut) and f"--resume {cut}" in stopped.value.advice()
    assert (cut / "seed-0" / "summary.json").is_file() and not (cut / "seed-1" / "summary.json").exists()
    assert not (cut / "seed-2").exists() and not (cut / "summary.json").exists()
    seed0_mtime = (cut / "seed-0" / "summary.json").stat().st_mtime_ns
    with pytest.raises(ValueError, match="already holds a run"):
        fitnets_fast.train("digits", out_dir=str(cut), seeds=[0, 1, 2], **TINY)
    resumed = fitnets_fast.train(resume=str(cut), quiet=True, workers=1)
    assert (cut / "seed-0" / "summary.json").stat().st_mtime_ns == seed0_mtime      # finished seeds are read
    for s in (0, 1, 2):
        assert {r: {k: v[k] for k in ("test_acc_best", "test_acc_last", "epochs")} for r, v in _seed_rows(cut, s).items()} \
            == {r: {k: v[k] for k in ("test_acc_best", "test_acc_last", "epochs")} for r, v in per_seed[s].items()}
    for a, b in zip(resumed["rows"], summary["rows"]):
        assert a["test_acc_best"] == b["test_acc_best"] and a["test_acc_last"] == b["test_acc_last"]


def test_the_parent_folder_is_claimed_atomically_and_locked(tmp_path, monkeypatch):
    """Two launches with the same default folder name get two folders; while a multi-seed run is going, a
    resume of its folder (here from inside the run, as another process would) is refused, naming the holder."""
    monkeypatch.setattr(trainer, "default_out_dir", lambda preset: str(tmp_path / "runs" / preset))
    tries = []

    def resume_meanwhile(record):
        if not tries:
            with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
                fitnets_fast.train(resume=str(tmp_path / "runs" / "digits"), quiet=True)
            tries.append(record)

    small = dict(TINY, methods=[])
    first = fitnets_fast.train("digits", seeds=[0, 1], callback=resume_meanwhile, **small)
    second = fitnets_fast.train("digits", seeds=[0, 1], workers=1, **small)
    assert tries and (first["run_dir"], second["run_dir"]) == (str(tmp_path / "runs" / "digits"),
                                                               str(tmp_path / "runs" / "digits-2"))
    run_ids = {json.loads((tmp_path / "runs" / d / "run.json").read_text())["run_id"] for d in ("digits", "digits-2")}
    assert len(run_ids) == 2


def test_the_command_line_runs_three_seeds_of_the_digits_preset_by_default():
    args = cli.build_parser().parse_args(["train"])
    assert cli._run_settings(args)["seeds"] == [0, 1, 2]
    assert "seeds" not in cli._run_settings(cli.build_parser().parse_args(["train", "--seed", "4"]))
    assert "seeds" not in cli._run_settings(cli.build_parser().parse_args(["train", "--preset", "mnist"]))


def test_cli_seeds_with_shared_teacher_trains_one_teacher(tmp_path, capsys):
    out = tmp_path / "shared"
    settings = [a for k, v in TINY.items() if k not in ("device", "quiet") for a in ("--set", f"{k}={json.dumps(v)}")]
    assert cli.main(["train", "--out", str(out), "--device", "cpu", "--quiet", "--seeds", "0,1",
                     "--set", "shared_teacher=true"] + settings) == 0
    printed = capsys.readouterr().out
    assert "2 seeds (0, 1); teacher: shared: trained by seed 0, loaded by the others" in printed
    assert "±" in printed and f"run folder: {out}" in printed
    teacher_records = {s: [r for r in RunDir(out / f"seed-{s}").read_metrics() if r["row"] == "teacher"]
                       for s in (0, 1)}
    assert len(teacher_records[0]) == TINY["teacher_max_epochs"] and teacher_records[1] == []
    cfg1 = json.loads((out / "seed-1" / "config.json").read_text())["config"]
    assert cfg1["shared_teacher"] is True and cfg1["teacher_checkpoint"] == str((out / "seed-0" / "models" /
                                                                                 "teacher.pt").resolve())
    summary = json.loads((out / "summary.json").read_text())
    teacher = summary["rows"][0]
    assert teacher["n"] == 1 and teacher["test_acc_best"]["std"] is None
    assert all(r["n"] == 2 for r in summary["rows"][1:])
    assert _seed_rows(out, 1)["teacher"]["test_acc_best"] == _seed_rows(out, 0)["teacher"]["test_acc_best"]

    assert cli.main(["train", "--seed", "0", "--seeds", "0,1"]) == 1
    assert cli.main(["train", "--resume", str(out), "--seeds", "0,1"]) == 1
    assert cli.main(["train", "--out", str(tmp_path / "bad"), "--seeds", "1,x", "--quiet"]) == 1
    assert "comma-separated integers" in capsys.readouterr().err
