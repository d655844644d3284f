"""``fitnets_fast.distill`` on networks written here (ReLU CNNs, not from the package), tensors and DataLoaders."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import fitnets_fast
from fitnets_fast import data, features
from fitnets_fast.feed import EpochBatchSampler
from fitnets_fast.run_files import RunDir


class Teacher(nn.Module):
    """A wide ReLU CNN; ``features.3`` is its second ReLU (32 x 8 x 8)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 10))

    def forward(self, x):
        return self.head(self.features(x))


class Student(nn.Module):
    """Thinner and deeper; ``body.5`` is its third ReLU (12 x 8 x 8)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1),
                                  nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(12 * 4 * 4, 10))

    def forward(self, x):
        return self.head(self.body(x))


SETTINGS = dict(hint_max_epochs=2, hint_patience=None, max_epochs=3, patience=None, lambda_start=1,
                lambda_saturate=3, batch_size=64, speed_repeats=1, num_threads=1, lr=0.002)


@pytest.fixture(scope="module")
def digits():
    prepared = data.prepare("digits")
    return prepared.train, prepared.valid, prepared.test


@pytest.fixture(scope="module")
def teacher(digits):
    """A teacher trained for a few epochs of SGD on the digits."""
    torch.manual_seed(0)
    model = Teacher()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = digits[0]
    for _ in range(4):
        for i in range(0, x.shape[0], 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model


def _student():
    torch.manual_seed(1)
    return Student()


def test_distill_own_relu_networks_end_to_end_and_hint_stage_stops_early(tmp_path, digits, teacher):
    student = _student()
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    calls = {"student": [0, 0], "teacher": [0, 0]}   # runs of (the guided/hint module, the module after it)

    def counter(role, i):
        def hook(module, inputs, output):
            calls[role][i] += 1
        return hook

    student.body[5].register_forward_hook(counter("student", 0))   # hooks travel into distill's copies
    student.body[6].register_forward_hook(counter("student", 1))
    teacher.features[3].register_forward_hook(counter("teacher", 0))
    teacher.features[4].register_forward_hook(counter("teacher", 1))
    per_epoch = []

    def snapshot(record):
        per_epoch.append((record["row"], record["stage"], json.loads(json.dumps(calls))))

    train, valid, test = digits
    summary = fitnets_fast.distill(teacher, student, train, valid, test, methods=("backprop", "kd", "fitnets"),
                                   hint="features.3", guided="body.5", out_dir=str(tmp_path / "run"), device="cpu",
                                   quiet=True, callback=snapshot, **SETTINGS)
    rows = {r["row"]: r for r in summary["rows"]}
    assert list(rows) == ["teacher", "backprop", "kd", "fitnets"]
    assert rows["teacher"]["epochs"] == 0 and rows["teacher"]["test_acc_best"] > 0.5
    assert rows["fitnets"]["stages"]["hints"]["epochs"] == 2 and rows["fitnets"]["stages"]["kd"]["epochs"] == 3
    for name in ("backprop", "kd", "fitnets"):
        assert rows[name]["test_acc_best"] > 0.2 and rows[name]["params"] == sum(p.numel() for p in student.parameters())
    # The given student is not changed (each row trains a copy of it).
    assert all(torch.equal(v, initial[k]) for k, v in student.state_dict().items())
    # Hint epochs: the student ran to body.5 but never body.6; the teacher's hint maps came from features.3
    # (once, cached) and its later modules never ran in that stage.
    before = {"student": [0, 0], "teacher": [0, 0]}
    stages = {}
    for row, stage, now in per_epoch:
        delta = {k: [a - b for a, b in zip(now[k], before[k])] for k in now}
        stages.setdefault((row, stage), []).append(delta)
        before = now
    for delta in stages[("fitnets", "hints")]:
        assert delta["student"][0] > 0 and delta["student"][1] == 0
        assert delta["teacher"][1] == 0
    for delta in stages[("fitnets", "kd")]:
        assert delta["student"][1] > 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["models"]["regressor"].startswith("paper: 1x1 valid conv, relu")
    assert config["models"]["teacher"]["hint"] == "features.3" and config["models"]["student"]["guided"] == "body.5"


def test_a_dataloader_gives_the_tensors_result(tmp_path, digits, teacher):
    train, valid, test = digits
    settings = dict(SETTINGS, methods=("fitnets",), hint="features.3", guided="body.5", device="cpu", quiet=True,
                    cache_teacher=False, eval_batch_size=1000)
    by_tensors = fitnets_fast.distill(teacher, _student(), train, valid, test, out_dir=str(tmp_path / "t"), **settings)
    loader = DataLoader(TensorDataset(*train), batch_sampler=EpochBatchSampler(len(train[0]), 64, seed=0))
    valid_loader = DataLoader(TensorDataset(*valid), batch_size=1000)
    test_loader = DataLoader(TensorDataset(*test), batch_size=1000)
    by_loader = fitnets_fast.distill(teacher, _student(), loader, valid_loader, test_loader,
                                     out_dir=str(tmp_path / "l"), **settings)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(tmp_path / "t").read_metrics()]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(tmp_path / "l").read_metrics()]
    assert by_loader["rows"][1]["test_acc_best"] == by_tensors["rows"][1]["test_acc_best"]


# A child process that loads this file's networks and the teacher's weights, distils, and is killed (signal
# 9: no cleanup, no exception handling) right after the checkpoint of KD epoch 2.
_KILLED_CHILD = """
import importlib.util, json, os, sys
import torch
from torch.utils.data import DataLoader, TensorDataset
import fitnets_fast
from fitnets_fast import data
spec = importlib.util.spec_from_file_location("distill_nets", sys.argv[1])
nets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nets)
teacher = nets.Teacher()
teacher.load_state_dict(torch.load(sys.argv[2], weights_only=True))
prepared = data.prepare("digits")
train = prepared.train
if sys.argv[4] == "loader":
    train = DataLoader(TensorDataset(*train), batch_size=64, shuffle=True, drop_last=True)
def kill(record):
    if (record["stage"], record["epoch"]) == ("kd", 2):
        os.kill(os.getpid(), 9)
fitnets_fast.distill(teacher, nets._student(), train, prepared.valid, prepared.test, out_dir=sys.argv[3],
                     callback=kill, **json.loads(sys.argv[5]))
"""


@pytest.mark.parametrize("kind", ["tensors", "loader"])
def test_killed_distill_resumes_bit_identical(tmp_path, digits, teacher, kind):
    """kill -9 in the middle of the KD stage, then ``resume=True``: the same metrics and model as an
    uninterrupted run, for resident tensors and for a shuffling DataLoader (its order comes from the
    checkpointed global RNG)."""
    train, valid, test = digits
    if kind == "loader":
        train = DataLoader(TensorDataset(*train), batch_size=64, shuffle=True, drop_last=True)
    settings = dict(SETTINGS, methods=("fitnets",), hint="features.3", guided="body.5", device="cpu", quiet=True)
    fitnets_fast.distill(teacher, _student(), train, valid, test, out_dir=str(tmp_path / "full"), **settings)

    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    cut = tmp_path / "cut"
    child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, __file__, str(tmp_path / "teacher.pt"), str(cut),
                            kind, json.dumps(settings)], capture_output=True, text=True, timeout=900)
    assert child.returncode == -9, child.stderr
    assert [(r["stage"], r["epoch"]) for r in RunDir(cut).read_metrics()][-1] == ("kd", 2)
    with pytest.raises(ValueError, match="already holds a run"):
        fitnets_fast.distill(teacher, _student(), train, valid, test, out_dir=str(cut), **settings)
    fitnets_fast.distill(teacher, _student(), train, valid, test, out_dir=str(cut), resume=True, **settings)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(cut).read_metrics()]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(tmp_path / "full").read_metrics()]
    a = torch.load(RunDir(tmp_path / "full").model_path("fitnets"), weights_only=True)["state_dict"]
    b = torch.load(RunDir(cut).model_path("fitnets"), weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_names_and_shapes_give_clear_errors(tmp_path, digits, teacher):
    train, valid, test = digits
    with pytest.raises(ValueError, match=r"no module named 'features\.33'; closest names: features\.3"):
        features.resolve(teacher, "features.33", "teacher")
    with pytest.raises(ValueError, match="body.5"):
        fitnets_fast.distill(teacher, _student(), train, valid, hint="features.3", guided="bdy.5",
                             out_dir=str(tmp_path / "a"), device="cpu", quiet=True, **SETTINGS)
    # A hint map (8x8) larger than the guided map (4x4) cannot be shrunk to by a valid conv.
    with pytest.raises(ValueError, match="conv_bn_relu"):
        fitnets_fast.distill(teacher, _student(), train, valid, hint="features.3", guided="body.8",
                             out_dir=str(tmp_path / "b"), device="cpu", quiet=True, **SETTINGS)


def test_forward_to_stops_after_the_named_module():
    model = Student()
    ran = []
    for i, m in enumerate(model.body):
        m.register_forward_hook(lambda mod, inp, out, i=i: ran.append(i))
    out = features.forward_to(model, "body.3", torch.randn(2, 1, 8, 8))
    assert ran == [0, 1, 2, 3] and out.shape == (2, 8, 8, 8)
    assert [type(m).__name__ for m in features.modules_before(model, "body.5", torch.randn(2, 1, 8, 8))] == [
        "Conv2d"] * 3


def test_seeds_build_a_student_per_seed_aggregate_and_resume(tmp_path, digits, teacher):
    """``seeds=``: the student function is called once per seed (its own initialisation), every seed has its
    folder, the teacher row counts once; a run interrupted in the second seed resumes to the same numbers."""
    train, valid, test = digits
    settings = dict(SETTINGS, methods=("backprop", "fitnets"), hint="features.3", guided="body.5", device="cpu",
                    quiet=True, max_epochs=2, hint_max_epochs=1)
    built = []

    def student():
        built.append(Student())
        return built[-1]

    full = fitnets_fast.distill(teacher, student, train, valid, test, seeds=[0, 3], out_dir=str(tmp_path / "f"),
                                **settings)
    assert len(built) == 2 and not torch.equal(built[0].body[0].weight, built[1].body[0].weight)
    assert full["seeds"] == [0, 3] and (tmp_path / "f" / "seed-3" / "summary.json").is_file()
    rows = {r["row"]: r for r in full["rows"]}
    assert rows["teacher"]["n"] == 1 and rows["backprop"]["n"] == rows["fitnets"]["n"] == 2
    per_seed = [{r["row"]: r["test_acc_last"] for r in s["rows"]} for s in full["per_seed"]]
    assert rows["fitnets"]["test_acc_last"]["values"] == [p["fitnets"] for p in per_seed]

    records = []

    def stop(record):
        records.append(record)
        if len(records) == 7:      # a seed makes 2 (backprop) + 1 (hints) + 2 (KD) records: inside seed 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as stopped:
        fitnets_fast.distill(teacher, student, train, valid, test, seeds=[0, 3], out_dir=str(tmp_path / "c"),
                             callback=stop, **settings)
    assert stopped.value.run_dir == str(tmp_path / "c")
    with pytest.raises(ValueError, match="own seeds"):
        fitnets_fast.distill(teacher, student, train, valid, test, seeds=[0, 1], out_dir=str(tmp_path / "c"),
                             resume=True, **settings)
    again = fitnets_fast.distill(teacher, student, train, valid, test, seeds=[0, 3], out_dir=str(tmp_path / "c"),
                                 resume=True, **settings)
    assert [r["test_acc_last"] for r in again["rows"]] == [r["test_acc_last"] for r in full["rows"]]
    with pytest.raises(ValueError, match="not both"):
        fitnets_fast.distill(teacher, student, train, seeds=[0, 1], seed=2, **settings)
