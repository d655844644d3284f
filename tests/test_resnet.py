"""fitnets_fast.resnet through models.build: exact parameter counts, depth, stage shapes, module paths,
shortcuts, forward, and clear errors on bad input."""
import pytest
import torch
import torch.nn as nn

from fitnets_fast import models, resnet

# All parameters (BN included) with 100 classes, as published for these networks.
COUNTS_100 = {"resnet20": 278_324, "resnet32": 472_756, "resnet56": 861_620, "resnet110": 1_736_564,
              "resnet8x4": 1_233_540, "resnet32x4": 7_433_860}
NAMES = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
         "resnet32x4"]


def _params(net):
    return sum(p.numel() for p in net.parameters())


def test_names_registered():
    assert resnet.names() == NAMES
    assert set(NAMES) <= set(models.names())
    assert len(set(models.names())) == len(models.names())


@pytest.mark.parametrize("name,count", sorted(COUNTS_100.items()))
def test_parameter_counts_exact(name, count):
    assert _params(models.build(name, 100)) == count


def test_parameter_count_follows_num_classes():
    # Only the linear head depends on the class count: 65 parameters per class (64 weights + bias).
    assert _params(models.build("resnet20", 10)) == COUNTS_100["resnet20"] - 90 * 65


@pytest.mark.parametrize("name", NAMES)
def test_depth_widths_and_stage_shapes(name):
    net = models.build(name, 100).eval()
    assert isinstance(net, resnet.CifarResNet) and net.num_classes == 100
    assert net.input_shape == (3, 32, 32)
    wide = name.endswith("x4")
    stem, widths = (32, (64, 128, 256)) if wide else (16, (16, 32, 64))
    # depth = main-path 3x3 convolutions + the linear layer (the 1x1 shortcut convolutions do not count)
    mains = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(mains) + 1 == net.depth == int(name[6:].replace("x4", ""))
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv2d))
    assert net.conv1.out_channels == stem
    shapes = {}
    hooks = [net.get_submodule(p).register_forward_hook(
        lambda mod, inp, out, p=p: shapes.__setitem__(p, tuple(out.shape[1:])))
        for p in ("relu", "layer1", "layer2", "layer3", "layer2.0", "pool")]
    with torch.no_grad():
        logits = net(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert logits.shape == (2, 100) and torch.isfinite(logits).all()
    assert shapes["layer1"] == (widths[0], 32, 32)
    assert shapes["layer2"] == shapes["layer2.0"] == (widths[1], 16, 16)
    assert shapes["layer3"] == (widths[2], 8, 8)
    assert shapes["pool"] == (widths[2], 1, 1)
    n = (net.depth - 2) // 6
    assert [len(s) for s in (net.layer1, net.layer2, net.layer3)] == [n] * 3


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4"])
def test_shortcuts_project_only_where_shape_changes(name):
    net = models.build(name)
    projected = [p for p, m in net.named_modules() if isinstance(m, resnet.BasicBlock)
                 and not isinstance(m.shortcut, nn.Identity)]
    # the narrow nets project at the start of stages 2 and 3; the x4 nets also at stage 1 (32 -> 64 channels)
    expected = ["layer2.0", "layer3.0"] if name == "resnet20" else ["layer1.0", "layer2.0", "layer3.0"]
    assert projected == expected
    assert net.layer2[0].shortcut[0].stride == (2, 2)


def test_block_is_residual():
    torch.manual_seed(0)
    block = resnet.BasicBlock(5, 5).eval()
    x = torch.randn(3, 5, 7, 9, dtype=torch.float64)
    block.double()
    with torch.no_grad():
        inner = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        assert torch.equal(block(x), torch.relu(inner + x))
    down = resnet.BasicBlock(5, 6, stride=2).eval().double()
    with torch.no_grad():
        assert down(x).shape == (3, 6, 4, 5)


def test_initialisation():
    net = models.build("resnet20")
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
    w = net.layer3[1].conv1.weight            # Kaiming normal, fan out: std sqrt(2 / (64 * 9)) = 0.0589
    assert abs(w.std().item() - (2 / (64 * 9)) ** 0.5) < 0.005


def test_trains_one_step():
    torch.manual_seed(0)
    net = models.build("resnet8", 7)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(6, 3, 12, 12), torch.randint(0, 7, (6,))
    before = net.layer2[0].conv1.weight.detach().clone()
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert not torch.equal(before, net.layer2[0].conv1.weight)


def test_errors():
    with pytest.raises(ValueError, match="unknown model name 'resnet21'.*resnet20"):
        models.build("resnet21")
    with pytest.raises(TypeError, match="init_range.*valid option: backend"):
        models.build("resnet20", init_range=0.1)
    with pytest.raises(ValueError, match="not a maxout network"):
        models.arch("resnet20")
    models.build("resnet8", backend="reference")            # accepted so one call builds either kind
    with pytest.raises(ValueError):
        models.build("resnet8", backend="nope")
    for depth in (7, 9, 2, True):
        with pytest.raises(ValueError, match="6n \\+ 2"):
            resnet.CifarResNet(depth)
    with pytest.raises(ValueError, match="widths"):
        resnet.CifarResNet(8, (16, 16, 32))
    with pytest.raises(ValueError, match="num_classes"):
        models.build("resnet8", 1)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        models.build("resnet8")(torch.randn(2, 1, 32, 32))
