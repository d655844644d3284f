"""End-to-end FitNets trainer runs on tiny synthetic data (CPU, seconds each)."""
import json

import pytest
import torch

from fitnets_fast import features, methods, models, nn, optim, trainer
from fitnets_fast.loop import derive_seed
from fitnets_fast.run_files import CheckpointError, RunDir, load_model_file
from fitnets_fast.schedules import linear_decay

TINY = dict(dataset="synthetic", preprocessing="none", device="cpu", quiet=True,
            dataset_options={"n_train": 320, "n_test": 80, "num_classes": 4, "image_shape": [1, 8, 8], "noise": 20.0},
            batch_size=32, teacher_max_epochs=3, teacher_lr_saturate=3, teacher_momentum_saturate=3,
            hint_max_epochs=2, max_epochs=3, lambda_start=1, lambda_saturate=4, lambda_final=2.0,
            speed_repeats=1, speed_batch_size=40, num_threads=1)


def _tiny(tmp_path, name, **kw):
    return trainer.train("digits", out_dir=str(tmp_path / name), **{**TINY, **kw})


def _initial_student(num_classes=4):
    torch.manual_seed(derive_seed(0, "student"))
    return models.build("fitnet_digits", num_classes)


def test_tiny_run_goes_through_every_stage(tmp_path, monkeypatch):
    # Max-norm after every optimizer step: wrap the projection and count steps.
    counts = {"steps": 0, "projections": 0}
    for cls in (optim.RMSProp, optim.Momentum):
        real_step = cls.step
        monkeypatch.setattr(cls, "step", lambda self, closure=None, _s=real_step: (
            counts.__setitem__("steps", counts["steps"] + 1), _s(self))[1])
    real_apply = optim.MaxNorm.apply

    def checked_apply(self):
        real_apply(self)
        counts["projections"] += 1
        for weight, limit in zip(self._weights, self._limits):
            assert weight.flatten(1).norm(dim=1).max().item() <= limit * (1 + 1e-5)

    monkeypatch.setattr(optim.MaxNorm, "apply", checked_apply)

    # The teacher runs only up to its hint layer (or fully, for KD); the student up to its guided layer.
    depth_calls = set()
    real_forward_to = features.forward_to

    def recording_forward_to(model, path, x):
        depth_calls.add((len(model.layers), int(path.split(".")[1])))
        return real_forward_to(model, path, x)

    monkeypatch.setattr(features, "forward_to", recording_forward_to)
    full_calls = set()
    real_forward = models.MaxoutNet.forward
    monkeypatch.setattr(models.MaxoutNet, "forward",
                        lambda self, x: full_calls.add(len(self.layers)) or real_forward(self, x))

    run_dir = tmp_path / "all"
    run = RunDir(run_dir)
    init = _initial_student()
    g = init.guided_layer
    h = models.build("teacher_digits").hint_layer
    n_t, n_s = len(models.build("teacher_digits").layers), len(init.layers)
    seen = []

    def callback(rec):
        seen.append((rec["row"], rec["stage"], rec["epoch"]))
        ck = run.load_checkpoint()
        if rec["row"] != "teacher":      # the frozen teacher never changes
            saved = load_model_file(run.model_path("teacher"))["state_dict"]
            assert all(torch.equal(ck["teacher"][k], v) for k, v in saved.items())
        if rec["stage"] == "hints":      # stage 1 trains student layers 0..g and the regressor only
            for k, v in init.state_dict().items():
                layer = int(k.split(".")[1])
                same = torch.equal(ck["student"][k], v)
                assert same == (layer > g), k
            assert ck["regressor"] is not None

    summary = trainer.train("digits", out_dir=str(run_dir), callback=callback,
                            methods=["backprop", "kd", "fitnets", "fitnet_onestage"], **TINY)
    assert counts["steps"] > 0 and counts["projections"] == counts["steps"]
    assert depth_calls == {(n_t, h), (n_s, g)} and full_calls == {n_t, n_s}
    assert [s[:2] for s in seen if s[2] == 1] == [("teacher", "teacher"), ("backprop", "ce"), ("kd", "kd"),
                                                  ("fitnets", "hints"), ("fitnets", "kd"),
                                                  ("fitnet_onestage", "onestage")]
    rows = {r["row"]: r for r in summary["rows"]}
    assert list(rows) == ["teacher", "backprop", "kd", "fitnets", "fitnet_onestage"]
    for r in rows.values():
        assert 0.0 <= r["test_acc_best"] <= 1.0 and 0.0 <= r["test_acc_last"] <= 1.0
        assert r["params"] > 0 and r["mults"] > 0 and r["speedup"] > 0
    assert rows["fitnets"]["stages"]["hints"]["epochs"] == 2
    assert rows["teacher"]["speedup"] == 1.0
    # The final students carry no regressor: exactly the student's parameters.
    for row in ("fitnets", "fitnet_onestage"):
        assert set(load_model_file(run.model_path(row))["state_dict"]) == set(init.state_dict())
    assert run.load_checkpoint()["regressor"] is None
    # Files, metrics and the lambda schedule.
    for f in ("config.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (run_dir / f).is_file(), f
    assert json.loads((run_dir / "summary.json").read_text())["rows"] == json.loads(json.dumps(summary["rows"]))
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["config"]["lambda_init"] == 4.0 and cfg["models"]["student"]["guided_layer"] == g
    # The run records the backend each op actually ran on, in its config and summary.
    assert cfg["backends_used"] == summary["backends_used"] and summary["backends_used"]["kd_loss"]
    records = run.read_metrics()
    kd = [r for r in records if r["stage"] == "kd"]
    assert kd and all(r["lambda"] == linear_decay(r["epoch"], 4.0, 2.0, 1, 4) for r in kd)
    best = [r for r in records if r["row"] == "kd" and r["best"]][-1]
    assert rows["kd"]["test_acc_best"] == best["test_acc"] and rows["kd"]["best_epoch"] == best["epoch"]
    # eval of a saved model reproduces the summary's best-validation test accuracy.
    ev = trainer.evaluate_model_file(str(run.model_path("kd")), device="cpu")
    assert ev["test_acc"] == rows["kd"]["test_acc_best"]


class _Kill(BaseException):
    pass


@pytest.mark.parametrize("channels_last", [False, True])
def test_resume_after_interruptions_matches_uninterrupted_run(tmp_path, monkeypatch, channels_last):
    settings = dict(methods=["fitnets"], channels_last=channels_last)
    built = []
    real_build = models.build
    monkeypatch.setattr(models, "build", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    full = _tiny(tmp_path, "full", **settings)
    kills = iter([("teacher", "teacher", 1), ("fitnets", "kd", 1)])
    target = [next(kills)]

    def killer(rec):
        if (rec["row"], rec["stage"], rec["epoch"]) == target[0]:
            target[0] = next(kills, None)
            raise KeyboardInterrupt

    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _tiny(tmp_path, "killed", callback=killer, **settings)
    ck = RunDir(out).load_checkpoint()
    assert (ck["task"], ck["epoch"]) == (0, 1)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(resume=str(out), quiet=True, callback=killer)
    ck = RunDir(out).load_checkpoint()
    assert (ck["task"], ck["epoch"]) == (2, 1)            # task 2 = fitnets/kd, one epoch done
    resumed = trainer.train(resume=str(out), quiet=True)

    def strip(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert strip(RunDir(out).read_metrics()) == strip(RunDir(tmp_path / "full").read_metrics())
    for row in ("teacher", "fitnets"):
        a = load_model_file(RunDir(tmp_path / "full").model_path(row))["state_dict"]
        b = load_model_file(RunDir(out).model_path(row))["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), row
    keys = ("test_acc_best", "test_acc_last", "best_epoch", "epochs", "stages")
    assert [{k: r[k] for k in keys} for r in resumed["rows"]] == [{k: r[k] for k in keys} for r in full["rows"]]
    conv_weights = [m.weight for model in built for m in model.modules() if isinstance(m, nn.MaxoutConv2d)]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert conv_weights and all(w.is_contiguous(memory_format=layout) for w in conv_weights)
    assert any(not w.is_contiguous() for w in conv_weights) == channels_last


def test_resume_errors_and_teacher_checkpoint(tmp_path):
    first = _tiny(tmp_path, "t", methods=[])
    teacher_file = first["files"]["models"]["teacher"]
    # A trained teacher loads instead of training; it is evaluated, not changed.
    again = _tiny(tmp_path, "t2", methods=[], teacher_checkpoint=teacher_file)
    assert again["rows"][0]["test_acc_best"] == first["rows"][0]["test_acc_best"]
    assert again["rows"][0]["epochs"] == 0
    with pytest.raises(ValueError, match="already holds a run"):
        _tiny(tmp_path, "t", methods=[])
    run = RunDir(tmp_path / "t")
    run.last_path.write_bytes(run.last_path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        trainer.train(resume=str(tmp_path / "t"), quiet=True)
    run.last_path.unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.train(resume=str(tmp_path / "t"), quiet=True)
    with pytest.raises(CheckpointError, match="not a run folder"):
        trainer.train(resume=str(tmp_path / "nothing"), quiet=True)


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(trainer.TrainingDiverged, match="teacher/teacher: the training loss is nan"):
        _tiny(tmp_path, "nan", methods=[], teacher_lr=1e38)


def test_no_validation_split_and_kd_options(tmp_path, monkeypatch):
    made = []

    class RecordingKD(methods.KDLoss):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((self.temperature, self.student_temperature, self.soft_scale))

    monkeypatch.setattr(methods, "KDLoss", RecordingKD)
    # Retraining on all data (the paper's final runs): no validation, so the kept epoch is the last one.
    summary = _tiny(tmp_path, "noval", methods=["fitnets"], validation=False, student_temperature=1.0,
                    tau_squared=True, pretrained_lr_scale=0.5, teacher_patience=1, patience=1)
    for r in summary["rows"]:
        assert r["best_epoch"] == r["epochs"] and r["test_acc_best"] == r["test_acc_last"]
    assert summary["rows"][1]["stages"]["hints"]["best_valid"] is None
    records = RunDir(tmp_path / "noval").read_metrics()
    assert all(r["valid_acc"] is None and r["best"] for r in records)
    assert [r["epoch"] for r in records if r["stage"] == "kd"] == [1, 2, 3]   # patience needs a validation split
    assert made == [(3.0, 1.0, 9.0)]        # released-code student temperature, Hinton's tau^2 = 9
