"""One full training step (forward, cross-entropy, backward, RMSProp, max-norm) at batch 128.

Variants, float32: ``fused`` (every layer on the C++ kernels, with the trainer's ``channels_last=true``: NHWC
batch and conv weights), ``reference`` (the eager reference model, NCHW as PyTorch users write it; NHWC makes
it slower), ``amax`` (the same model with maxout as ``view(...).amax(pieces_dim)``, the formulation of the project's
eager CPU baseline; float32 only) and ``compiled`` (``torch.compile`` of the reference model's
forward; the optimizer runs eagerly). ``fused`` updates with the fused C++ RMSProp and max-norm (the
trainer's default); the other variants with their ``fused=False`` foreach ops, plain PyTorch.
The same three with ``-bf16`` run the forward under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the
trainer's ``amp="bf16"``: bfloat16 convolutions and maxout, float32 weights, loss and optimizer).
"""
import contextlib
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from fitnets_fast import models, optim, reference
from conftest import amax_maxout, rounds

N = 128
MODELS = ["fitnet1", "fitnet4", "teacher_cifar", "fitnet_mnist", "teacher_mnist"]   # MNIST: untied biases, dropout


def _step_fn(name: str, backend: str, compile_model: bool, channels_last: bool = False, bf16: bool = False,
             amax: bool = False):
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = models.build(name, backend=backend).to(memory_format=layout)
    model.train()
    fused = None if backend == "cpp" else False
    opt = optim.RMSProp(optim.param_groups([(model, 1.0)]), lr=1e-3, fused=fused)
    max_norm = optim.MaxNorm([model], fused=fused)
    forward = torch.compile(model, dynamic=False) if compile_model else model
    x = torch.randn(N, *model.input_shape).contiguous(memory_format=layout)
    y = torch.randint(0, model.num_classes, (N,))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    # The reference layers look maxout_impl up at call time, so patching it for the step swaps every layer's.
    maxout = (lambda: mock.patch.object(reference, "maxout_impl", amax_maxout)) if amax else contextlib.nullcontext

    def step():
        opt.zero_grad(set_to_none=True)
        with maxout(), autocast():
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        max_norm.apply()

    return step


@pytest.mark.parametrize("name", MODELS)
def test_train_step(interleaved, name):
    torch._dynamo.reset()
    variants = {}
    for suffix, bf16 in [("", False), ("-bf16", True)]:
        variants.update({"fused" + suffix: _step_fn(name, "cpp", False, channels_last=True, bf16=bf16),
                         "reference" + suffix: _step_fn(name, "reference", False, bf16=bf16),
                         "compiled" + suffix: _step_fn(name, "reference", True, bf16=bf16)})
    variants["amax"] = _step_fn(name, "reference", False, amax=True)
    interleaved(variants, rounds(5), op="train_step", shape=name, mode="fwd+bwd+opt", images=N)
