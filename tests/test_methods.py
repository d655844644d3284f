"""The methods and the stage-1 regressor, checked through the public method classes (no trainer internals)."""
import torch
import torch.nn as nn

from fitnets_fast import methods, models, regressors, trainer
from fitnets_fast.loop import derive_seed
from fitnets_fast.nn import HintLoss, MaxoutConv2d
from fitnets_fast.run_files import RunDir

TINY = dict(dataset="synthetic", preprocessing="none", device="cpu", quiet=True, methods=["fitnets"],
            dataset_options={"n_train": 192, "n_test": 64, "num_classes": 4, "image_shape": [1, 8, 8], "noise": 20.0},
            batch_size=32, teacher_max_epochs=2, teacher_lr_saturate=2, teacher_momentum_saturate=2,
            hint_max_epochs=3, hint_patience=None, max_epochs=1, lambda_start=1, lambda_saturate=2,
            speed_repeats=1, speed_batch_size=32, num_threads=1)


def test_stage_two_starts_from_the_best_hint_trained_student(tmp_path, monkeypatch):
    """KD of the fitnets row starts from the stage-1 student of the best validation epoch, not a fresh one."""
    run = RunDir(tmp_path / "run")
    best_hint_student = {}
    at_kd_start = {}

    def callback(record):
        if record["stage"] == "hints" and record["best"]:
            best = torch.load(run.best_path, weights_only=True)["state"]["student"]
            best_hint_student.update({k: v.clone() for k, v in best.items()})

    real_init = methods.KD.__init__

    def init(self, setup, row, after=()):
        at_kd_start.update({k: v.detach().cpu().clone() for k, v in setup.student.state_dict().items()})
        real_init(self, setup, row, after)

    monkeypatch.setattr(methods.KD, "__init__", init)
    trainer.train("digits", out_dir=str(run.path), callback=callback, **TINY)
    assert at_kd_start and at_kd_start.keys() == best_hint_student.keys()
    assert all(torch.equal(at_kd_start[k], best_hint_student[k]) for k in at_kd_start)
    torch.manual_seed(derive_seed(0, "student"))
    fresh = models.build("fitnet_digits", 4).state_dict()
    g = models.build("fitnet_digits", 4).guided_layer
    changed = [k for k in fresh if not torch.equal(fresh[k], at_kd_start[k])]
    assert changed and all(int(k.split(".")[1]) <= g for k in changed)   # only stage 1's layers moved


def test_paper_regressor_takes_the_hint_layers_non_linearity():
    maxout = MaxoutConv2d(4, 6, 3, pieces=3, padding=1)
    reg, desc = regressors.build("paper", maxout, (6, 5, 5), (8, 7, 7))
    assert isinstance(reg, HintLoss) and reg.pieces == 3 and reg.activation == "maxout"
    assert reg.weight.shape == (6 * 3, 8, 3, 3) and desc == "paper: 3x3 valid conv, maxout (3 pieces)"
    relu_block = nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU())
    for module, activation in ((nn.ReLU(), "relu"), (relu_block, "relu"), (nn.Conv2d(4, 6, 3), "none")):
        reg, _ = regressors.build("paper", module, (6, 5, 5), (8, 5, 5))
        assert (reg.activation, reg.pieces, reg.kernel_size) == (activation, 1, 1)
    reg, _ = regressors.build("conv_bn_relu", nn.ReLU(), (6, 4, 4), (8, 8, 8))
    assert reg.regress(torch.randn(2, 8, 8, 8)).shape == (2, 6, 4, 4)
    reg, _ = regressors.build("conv_bn_relu", nn.ReLU(), (6, 8, 8), (8, 4, 4))
    assert isinstance(reg.module[0], nn.ConvTranspose2d)


def test_run_regressor_has_the_teacher_hint_layers_pieces(tmp_path):
    """The stage-1 regressor of a maxout teacher gets that hint layer's pieces (here 2; 1 would change its
    weight's first dim)."""
    pieces = []

    def callback(record):
        if record["stage"] == "hints":
            ck = RunDir(tmp_path / "run").load_checkpoint()
            pieces.append(ck["regressor"]["weight"].shape[0])

    trainer.train("digits", out_dir=str(tmp_path / "run"), callback=callback, **dict(TINY, hint_max_epochs=1))
    teacher = models.build("teacher_digits", 4)
    hint = teacher.layers[teacher.hint_layer]
    assert hint.pieces > 1 and pieces == [hint.out_features * hint.pieces]
