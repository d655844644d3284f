"""One full training step (forward, cross-entropy, backward, RMSProp, max-norm) at batch 128, fp32.

Variants: ``fused`` (every layer on the C++ kernels, with the trainer's ``channels_last=true``: NHWC batch
and conv weights), ``reference`` (the eager reference model, NCHW as PyTorch users write it; NHWC makes it
slower) and ``compiled`` (``torch.compile`` of the reference model's forward; the optimizer runs eagerly).
"""
import pytest
import torch
import torch.nn.functional as F

from fitnets_fast import models, optim
from conftest import rounds

N = 128
MODELS = ["fitnet1", "fitnet4", "teacher_cifar"]


def _step_fn(name: str, backend: str, compile_model: bool, channels_last: bool = False):
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = models.build(name, backend=backend).to(memory_format=layout)
    model.train()
    opt = optim.RMSProp(optim.param_groups([(model, 1.0)]), lr=1e-3)
    max_norm = optim.MaxNorm([model])
    forward = torch.compile(model, dynamic=False) if compile_model else model
    x = torch.randn(N, *model.input_shape).contiguous(memory_format=layout)
    y = torch.randint(0, model.num_classes, (N,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        opt.step()
        max_norm.apply()

    return step


@pytest.mark.parametrize("name", MODELS)
def test_train_step(interleaved, name):
    torch._dynamo.reset()
    variants = {"fused": _step_fn(name, "cpp", False, channels_last=True),
                "reference": _step_fn(name, "reference", False),
                "compiled": _step_fn(name, "reference", True)}
    interleaved(variants, rounds(5), op="train_step", shape=name, mode="fwd+bwd+opt", images=N)
