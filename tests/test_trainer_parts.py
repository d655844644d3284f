"""Schedules, optimizers, max-norm, config and run files of the FitNets trainer (no training here)."""
import json
import math
import warnings

import pytest
import torch
import torch.nn as nn

from fitnets_fast import config as C
from fitnets_fast import loop
from fitnets_fast.nn import MaxoutConv2d, MaxoutLinear
from fitnets_fast.optim import MaxNorm, Momentum, RMSProp, param_groups
from fitnets_fast.run_files import CheckpointError, RunDir, atomic_write, format_table
from fitnets_fast.schedules import exponential_decay, linear_decay, linear_ramp


# -- schedules --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("epoch, expected", [
    (1, 4.0), (4, 4.0),                                   # before start: lambda_0
    (5, 4.0 - 3.0 / 396 * 1),                            # first decayed epoch
    (100, 4.0 - 3.0 / 396 * 96),
    (288, 4.0 - 3.0 / 396 * 284),                         # the released all-data CIFAR run ends here (~1.85)
    (399, 4.0 - 3.0 / 396 * 395),
    (400, 1.0), (1000, 1.0),                              # saturated: lambda_final
])
def test_lambda_schedule_matches_authors_formula_cifar(epoch, expected):
    assert linear_decay(epoch, 4.0, 1.0, start=5, saturate=400) == pytest.approx(expected, rel=0, abs=1e-12)


def test_lambda_schedule_mnist_code_and_clipping():
    # MNIST yaml: 4 -> 0 over epochs 5..150.
    assert linear_decay(149, 4.0, 0.0, 5, 150) == pytest.approx(4.0 - 4.0 / 146 * 145)
    assert linear_decay(150, 4.0, 0.0, 5, 150) == 0.0
    # The formula is clipped at >= 0 even with a negative final value.
    assert linear_decay(3, 1.0, -5.0, 1, 10) == 0.0
    with pytest.raises(ValueError, match="epoch"):
        linear_decay(0, 4.0, 1.0, 5, 400)
    with pytest.raises(ValueError, match="saturate"):
        linear_decay(3, 4.0, 1.0, 5, 4)


def test_momentum_ramp_and_exponential_decay():
    assert linear_ramp(1, 0.5, 0.65, 1, 250) == pytest.approx(0.5)
    assert linear_ramp(126, 0.5, 0.65, 1, 250) == pytest.approx(0.5 + 0.15 * 125 / 249)
    assert linear_ramp(250, 0.5, 0.65, 1, 250) == pytest.approx(0.65)
    assert linear_ramp(900, 0.5, 0.65, 1, 250) == pytest.approx(0.65)
    assert exponential_decay(0, 0.05, 1.00004, 1e-6) == 0.05
    assert exponential_decay(10, 0.05, 1.00004, 1e-6) == pytest.approx(0.05 / 1.00004 ** 10)
    assert exponential_decay(10 ** 7, 0.05, 1.00004, 1e-6) == 1e-6


# -- optimizers ------------------------------------------------------------------------------------------

def _two_params():
    a = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([[0.3, 0.7]], dtype=torch.float64))
    return a, b


def test_rmsprop_two_steps_match_hand_computation():
    a, b = _two_params()
    opt = RMSProp([{"params": [a], "lr_scale": 1.0}, {"params": [b], "lr_scale": 0.05}], lr=0.005)
    g1 = [torch.tensor([0.2, -1e-7, 3.0], dtype=torch.float64), torch.tensor([[-0.4, 0.0]], dtype=torch.float64)]
    g2 = [torch.tensor([-0.1, 2e-7, 1.0], dtype=torch.float64), torch.tensor([[0.6, 1e-3]], dtype=torch.float64)]
    expect_a, expect_b = [1.0, -2.0, 0.5], [0.3, 0.7]
    ms_a, ms_b = [0.0] * 3, [0.0] * 2
    for ga, gb in (g1, g2):
        a.grad, b.grad = ga.clone(), gb.clone()
        opt.step()
        # pylearn2: ms <- 0.9 ms + 0.1 g^2 ; p <- p - lr*scale*g / max(sqrt(ms), 1e-5)
        for i, g in enumerate(ga.tolist()):
            ms_a[i] = 0.9 * ms_a[i] + 0.1 * g * g
            expect_a[i] -= 0.005 * 1.0 * g / max(math.sqrt(ms_a[i]), 1e-5)
        for i, g in enumerate(gb[0].tolist()):
            ms_b[i] = 0.9 * ms_b[i] + 0.1 * g * g
            expect_b[i] -= 0.005 * 0.05 * g / max(math.sqrt(ms_b[i]), 1e-5)
        assert a.detach().tolist() == pytest.approx(expect_a, rel=1e-12, abs=1e-15)
        assert b.detach()[0].tolist() == pytest.approx(expect_b, rel=1e-12, abs=1e-15)
    # The tiny gradient hit the 1e-5 floor (an added epsilon would give a different step).
    assert ms_a[1] ** 0.5 < 1e-5


def test_rmsprop_first_step_is_lr_times_sign_over_sqrt_decay():
    p = nn.Parameter(torch.tensor([2.0, -3.0], dtype=torch.float64))
    opt = RMSProp([p], lr=0.1)
    p.grad = torch.tensor([5.0, -0.25], dtype=torch.float64)
    opt.step()
    # ms = 0.1 g^2 -> step = lr * g / (sqrt(0.1)|g|) = lr * sign(g) / sqrt(0.1)
    assert p.detach().tolist() == pytest.approx([2.0 - 0.1 / math.sqrt(0.1), -3.0 + 0.1 / math.sqrt(0.1)])


def test_momentum_matches_pylearn2_rule_and_set_lr():
    p = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = Momentum([{"params": [p], "lr_scale": 0.5}], lr=0.2, momentum=0.5)
    p.grad = torch.tensor([1.0], dtype=torch.float64)
    opt.step()                        # v = -0.2*0.5*1 = -0.1 ; p = 0.9
    opt.set_lr(0.1)
    opt.set_momentum(0.6)
    p.grad = torch.tensor([2.0], dtype=torch.float64)
    opt.step()                        # v = 0.6*(-0.1) - 0.1*0.5*2 = -0.16 ; p = 0.74
    assert p.item() == pytest.approx(0.74)
    with pytest.raises(ValueError, match="momentum"):
        opt.set_momentum(1.0)
    with pytest.raises(ValueError, match="lr"):
        RMSProp([p], lr=0.0)


def test_param_groups_use_layer_lr_scales_and_multipliers():
    conv = MaxoutConv2d(1, 2, 3, lr_scale=0.05)
    lin = MaxoutLinear(4, 3)
    bn = nn.BatchNorm1d(3)
    groups = param_groups([(conv, 2.0), (lin, 1.0), (bn, 1.0)])
    assert [(round(g["lr_scale"], 12), len(g["params"])) for g in groups] == [(0.1, 2), (1.0, 4)]
    with pytest.raises(ValueError, match="two modules"):
        param_groups([(lin, 1.0), (lin, 1.0)])


def test_max_norm_projects_rows_above_the_limit_only():
    conv = MaxoutConv2d(2, 3, 3, pieces=2, max_norm=0.9)
    lin = MaxoutLinear(5, 2, pieces=1, max_norm=1.9365)
    free = MaxoutLinear(5, 2, max_norm=None)
    with torch.no_grad():
        conv.weight.normal_()
        conv.weight[0].mul_(1e-3)         # one small row stays untouched
        lin.weight.normal_().mul_(10)
        free.weight.normal_().mul_(10)
    small = conv.weight[0].clone()
    free_before = free.weight.clone()
    mn = MaxNorm([nn.ModuleList([conv, lin, free])])
    assert len(mn) == 2
    mn.apply()
    conv_norms = conv.weight.detach().flatten(1).norm(dim=1)
    assert torch.all(conv_norms <= 0.9 + 1e-6) and conv_norms[1:].max().item() == pytest.approx(0.9, rel=1e-5)
    assert torch.equal(conv.weight[0], small)
    assert lin.weight.detach().norm(dim=1).tolist() == pytest.approx([1.9365, 1.9365], rel=1e-5)
    assert torch.equal(free.weight, free_before)


# -- config ----------------------------------------------------------------------------------------------

def test_presets_resolve_and_round_trip_through_json():
    for name in C.preset_names():
        cfg = C.make_config(name)
        assert cfg.preset == name and cfg.choices, name
        again = C.Config.from_dict(json.loads(cfg.to_json()))
        assert again == cfg
    assert C.make_config("digits").methods == ["backprop", "kd", "fitnets"]


def test_overrides_are_type_checked():
    assert C.parse_overrides(["lr=0.01", "methods=[\"kd\"]", "patience=none", "dataset=mnist"]) == {
        "lr": 0.01, "methods": ["kd"], "patience": None, "dataset": "mnist"}
    cfg = C.make_config("digits", lr=1, student_temperature=1)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert C.make_config("mnist", **C.parse_overrides(["amp=none"])).amp == "none"
    with pytest.raises(ValueError, match="max_epochs must not be None"):
        C.make_config("digits", max_epochs=None)
    with pytest.raises(ValueError, match="unknown setting"):
        C.make_config("digits", learning_rate=0.1)
    with pytest.raises(ValueError, match="max_epochs expects"):
        C.make_config("digits", max_epochs="ten")
    with pytest.raises(ValueError, match="max_epochs must be >= 1"):
        C.make_config("digits", max_epochs=0)
    with pytest.raises(ValueError, match="methods"):
        C.make_config("digits", methods=["kd", "distill"])
    with pytest.raises(ValueError, match="preset"):
        C.make_config("imagenet")
    with pytest.raises(ValueError, match="key=value"):
        C.parse_overrides(["lr"])


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="amp='none'"):
        loop.Loop(C.make_config("digits", amp="bf16"), cpu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop.Loop(C.make_config("digits", amp="none"), cpu)
        monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
        loop.Loop(C.make_config("digits", amp="bf16"), cpu)


# -- run files -------------------------------------------------------------------------------------------

def test_atomic_write_keeps_previous_content_on_failure(tmp_path):
    path = tmp_path / "x.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_checkpoint_missing_or_corrupt_gives_clear_error_and_previous_survives(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not exist"):
        run.load_checkpoint()
    run.save_checkpoint({"task": 1, "epoch": 3, "w": torch.arange(4.0)})
    good = run.last_path.read_bytes()

    # A save that dies half-way leaves the previous checkpoint as it was.
    real_save = torch.save

    def dying_save(obj, f):
        real_save(obj, f)
        f.truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint({"task": 1, "epoch": 4, "w": torch.zeros(4)})
    monkeypatch.setattr(torch, "save", real_save)
    assert run.last_path.read_bytes() == good
    assert run.load_checkpoint()["epoch"] == 3

    run.last_path.write_bytes(good[: len(good) // 2])          # truncated file
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        run.load_checkpoint()
    torch.save({"something": "else"}, run.last_path)            # a readable file of another kind
    with pytest.raises(CheckpointError, match="is not a"):
        run.load_checkpoint()


def test_metrics_repair_and_table(tmp_path):
    run = RunDir(tmp_path)
    for e in range(3):
        run.append_metrics({"row": "kd", "stage": "kd", "epoch": e + 1, "train_loss": 1.0 / (e + 1)})
    assert run.repair_metrics(2) == f"{run.metrics_path}: dropped 1 record(s) written after the checkpoint"
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    with pytest.raises(CheckpointError):
        run.repair_metrics(5)
    table = format_table({"rows": [
        {"row": "teacher", "model": "t", "test_acc_best": 0.9, "test_acc_last": 0.85, "epochs": 3,
         "params": 12345, "mults": 2.5e6, "speedup": 1.0}]})
    assert "90.00%" in table and "85.00%" in table and "12.35K" in table and "2.50M" in table


# -- inference timing (Table 5) ---------------------------------------------------------------------------

def test_time_forward_times_inference_without_autograd():
    """A student's parameters require grad and the frozen teacher's do not: the speed column times both
    without building an autograd graph (else the student would pay for one)."""
    from fitnets_fast.trainer import _time_forward

    outputs_require_grad = []

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(1))

        def forward(self, x):
            y = x * self.weight
            outputs_require_grad.append(y.requires_grad)
            return y

    model = Scale()
    seconds = _time_forward(model, torch.ones(6, 2), batch=3, repeats=2)
    assert seconds > 0 and outputs_require_grad == [False] * 6  # (1 warm-up + 2 timed passes) x 2 batches
    assert not model.training
