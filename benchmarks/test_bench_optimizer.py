"""One optimizer update plus max-norm, as the trainer runs them after every backward, over a model's parameters.

Variants (float32, each on its own copy of the parameters and fixed random gradients): ``fused`` (the
default, ``fused=None``: one C++ pass per parameter group for pylearn2's RMSProp / momentum and one for the
max-norm), ``reference`` (``fused=False``: PyTorch's ``_foreach_*`` ops, five per parameter for RMSProp) and
``compiled`` (``torch.compile`` of that foreach update and max-norm).
"""
import pytest
import torch

from fitnets_fast import _backend, models, optim
from conftest import rounds

if _backend.module("cpp") is None:  # pragma: no cover
    pytest.skip(f"C++ kernels unavailable: {_backend.unavailable_reason('cpp')}", allow_module_level=True)

MODELS = ["fitnet_mnist", "teacher_mnist", "fitnet1", "teacher_cifar"]


def _update_fn(name: str, optimizer: str, fused: bool, compile_update: bool):
    torch.manual_seed(0)
    model = models.build(name).to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    groups = optim.param_groups([(model, 1.0)])
    if optimizer == "rmsprop":
        opt = optim.RMSProp(groups, lr=0.005, fused=None if fused else False)
    else:
        opt = optim.Momentum(groups, lr=0.05, momentum=0.5, fused=None if fused else False)
    max_norm = optim.MaxNorm([model], fused=None if fused else False)

    def update():
        opt.step()
        max_norm.apply()

    return torch.compile(update) if compile_update else update


@pytest.mark.parametrize("optimizer", ["rmsprop", "momentum"])
@pytest.mark.parametrize("name", MODELS)
def test_optimizer_update(interleaved, name, optimizer):
    torch._dynamo.reset()
    variants = {"fused": _update_fn(name, optimizer, True, False),
                "reference": _update_fn(name, optimizer, False, False),
                "compiled": _update_fn(name, optimizer, False, True)}
    params = sum(p.numel() for p in models.build(name).parameters())
    interleaved(variants, rounds(15), op=f"{optimizer}+max_norm", shape=name, mode="update", params=params)
