"""fitnets_fast.suggest_hints and ``fitnets-fast hints``: the candidate rule, depth fractions, the paper's
regressor, the ranking (published pairs in the top three) and clear errors."""
import pytest
import torch
import torch.nn as nn

import fitnets_fast
from fitnets_fast import models
from fitnets_fast.cli import main
from fitnets_fast.hints import candidates, format_hints, suggest_hints
from fitnets_fast.run_files import save_model


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU()
        self.shortcut = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))   # no non-linearity: not a block

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) + self.shortcut(x))


class Net(nn.Module):
    """A user network: a plain Sequential, a block, a reused activation and a linear head (7 weight layers)."""

    def __init__(self, width=6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.block = Block(width)
        self.act = nn.Tanh()
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        x = self.act(self.block(self.features(x)))
        x = self.act(x)                          # run twice: its path names no single place
        return self.head(x.mean(dim=(2, 3)))


def test_candidates_of_a_user_network():
    net = Net().train()
    cands = candidates(net, (3, 11, 13))
    assert net.training                                     # mode restored
    got = [(c.path, c.shape, c.level) for c in cands]
    # features (a block) returns the same tensor as features.4, so only the outer one is kept
    assert got == [("features.1", (6, 11, 13), 1), ("features.3", (6, 9, 11), 1), ("features", (6, 4, 5), 0),
                   ("block", (6, 4, 5), 0)]
    # weight layers run: conv, conv | block: conv, shortcut conv | head -> 5 in all (BN excluded)
    assert [c.depth for c in cands] == [1 / 5, 2 / 5, 2 / 5, 4 / 5]
    assert all(c.pieces == 1 for c in cands)


def test_regressor_geometry_and_order():
    teacher, student = Net(8), Net(5)
    pairs = suggest_hints(teacher, student, (3, 11, 13), top=100)
    assert len(pairs) == 16
    by = {(p.hint.path, p.guided.path): p for p in pairs}
    p = by[("features.3", "features.1")]                    # 9x11 from 11x13: a 3x3 valid conv
    assert p.kernel == (3, 3) and p.regressor_weights == 5 * 8 * 9 and p.regressor_mults == 5 * 8 * 9 * 99
    student_params = sum(q.numel() for q in student.parameters())
    assert p.score == pytest.approx(abs(2 / 5 - 0.5) + abs(1 / 5 - 0.5) + 0.25 * 2 + 360 / student_params)
    larger = by[("features.1", "features.3")]               # teacher map larger: no paper regressor, ranked last
    assert larger.kernel is None and larger.regressor_weights is None and larger.regressor_mults is None
    first_none = min(i for i, q in enumerate(pairs) if q.kernel is None)
    assert all(q.kernel is None for q in pairs[first_none:])
    assert all(a.score <= b.score for a, b in zip(pairs[:first_none], pairs[1:first_none]))
    assert [(q.hint.path, q.guided.path) for q in suggest_hints(teacher, student, (3, 11, 13), top=3)] == \
        [(q.hint.path, q.guided.path) for q in pairs[:3]]
    table = format_hints(pairs)
    assert "none (teacher map larger)" in table and "3x3" in table and f"{5 * 8 * 9 * 99:,}" in table


def test_published_resnet_pair_is_in_the_top_three():
    pairs = fitnets_fast.suggest_hints("resnet56", "resnet20", top=3)
    match = [p for p in pairs if (p.hint.path, p.guided.path) == ("layer2", "layer2")]
    assert len(match) == 1
    p = match[0]
    assert p.hint.shape == p.guided.shape == (32, 16, 16) and p.kernel == (1, 1)
    assert p.regressor_weights == 32 * 32 and p.regressor_mults == 32 * 32 * 256
    # resnet20: stem, 6 convs, 1 shortcut + 6 convs of 22 weight layers (19 convs, 2 shortcuts, fc)
    assert p.guided.depth == pytest.approx(14 / 22)


@pytest.fixture(scope="module")
def cifar_teacher():
    return models.build("teacher_cifar")


@pytest.mark.parametrize("student", ["fitnet1", "fitnet2", "fitnet3", "fitnet4"])
def test_paper_pair_is_in_the_top_three(cifar_teacher, student):
    s = models.build(student)
    paper = (f"layers.{cifar_teacher.hint_layer}", f"layers.{s.guided_layer}")
    pairs = suggest_hints(cifar_teacher, s, top=3)
    match = [p for p in pairs if (p.hint.path, p.guided.path) == paper]
    assert len(match) == 1
    p = match[0]
    c = s.layer_output_shape(s.guided_layer)[0]
    assert p.hint.shape == (192, 7, 7) and p.guided.shape == (c, 8, 8) and p.kernel == (2, 2)
    assert p.hint.pieces == 2 and p.regressor_weights == c * 192 * 4 * 2
    assert p.regressor_weights == models.build_regressor((192, 7, 7), (c, 8, 8)).weight.numel()
    assert p.hint.depth == pytest.approx(2 / 5)             # h1 of h0, h1, h2, fc, y


def test_model_files_and_names(tmp_path):
    teacher = models.build("teacher_digits")
    path = tmp_path / "teacher.pt"
    save_model(path, model_name="teacher_digits", model_options={}, num_classes=10,
               state_dict=teacher.state_dict(), data={}, role="teacher")
    from_file = suggest_hints(str(path), "fitnet_digits", top=5)
    from_name = suggest_hints("teacher_digits", "fitnet_digits", top=5)
    assert [(p.hint.path, p.guided.path, p.score) for p in from_file] == \
        [(p.hint.path, p.guided.path, p.score) for p in from_name]
    # The student's own guided layer (h8) and h7 sit equally close to its middle (8/17 and 9/17 deep).
    assert {(p.hint.path, p.guided.path) for p in from_name[:2]} == {("layers.1", "layers.7"), ("layers.1", "layers.8")}


def test_cli_prints_the_table(capsys):
    assert main(["hints", "--teacher", "teacher_digits", "--student", "fitnet_digits", "--top", "2",
                 "--input-shape", "1,8,8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[0].split()[:3] == ["#", "hint", "(teacher)"]
    assert out[1].split()[:7] == ["1", "layers.1", "32x4x4", "0.50", "layers.7", "6x4x4", "0.47"]
    assert main(["hints", "--teacher", "teacher_digits", "--student", "fitnet_digits", "--input-shape", "1,8"]) == 1
    assert "C, H, W" in capsys.readouterr().err
    assert main(["hints", "--teacher", "nope", "--student", "fitnet_digits"]) == 1
    assert "neither a model name" in capsys.readouterr().err


def test_errors():
    with pytest.raises(ValueError, match="input_shape .* is required"):
        suggest_hints(Net(), Net())
    with pytest.raises(ValueError, match="top"):
        suggest_hints(Net(), Net(), (3, 8, 8), top=0)
    with pytest.raises(TypeError, match="nn.Module"):
        suggest_hints(3, Net(), (3, 8, 8))
    with pytest.raises(ValueError, match="no candidate"):
        suggest_hints(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), Net(), (3, 2, 2))
    with pytest.raises(ValueError, match=r"Net does not run on inputs of shape \(3, 2, 2\)"):
        suggest_hints(Net(), Net(), (3, 2, 2))
