"""The maxout teachers' input dropout, forward and backward, on every layer input of a teacher at batch 128.

Variants (float32, channels-last maps as the trainer feeds them): ``fused`` (the C++ kernel: the mask hashed
from a seed in the same pass, and again in the backward), ``reference`` (eager ``x * torch.rand_like(x)
.ge_(p).mul_(scale)``, the formulation the kernel replaces) and ``compiled`` (``torch.compile`` of it).
"""
import pytest
import torch

from fitnets_fast import _backend, models
from conftest import grad_of, rounds

cpp = _backend.module("cpp")
if cpp is None:  # pragma: no cover
    pytest.skip(f"C++ kernels unavailable: {_backend.unavailable_reason('cpp')}", allow_module_level=True)

N = 128


def _eager(xs, ps, scales):
    return sum(x.mul(torch.rand_like(x).ge_(p).mul_(s)).sum() for x, p, s in zip(xs, ps, scales))


def _fused(xs, ps, scales):
    return sum(cpp.dropout.dropout(x, p, s).sum() for x, p, s in zip(xs, ps, scales))


@pytest.mark.parametrize("name", ["teacher_mnist", "teacher_cifar"])
def test_teacher_input_dropout(interleaved, name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = models.build(name)
    shapes = [net.input_shape] + [net.layer_output_shape(i) for i in range(len(net.layers) - 1)]
    xs = [torch.randn(N, *s).contiguous(memory_format=torch.channels_last) if len(s) == 3 else torch.randn(N, *s)
          for s in shapes]
    xs = [x.requires_grad_() for x in xs]
    ps, scales = net.input_dropout, net.input_dropout_scale
    compiled = torch.compile(_eager, dynamic=False)
    variants = {"fused": grad_of(lambda *t: _fused(t, ps, scales), xs),
                "reference": grad_of(lambda *t: _eager(t, ps, scales), xs),
                "compiled": grad_of(lambda *t: compiled(t, ps, scales), xs)}
    interleaved(variants, rounds(9), op="input_dropout", shape=name, mode="fwd+bwd",
                elements=sum(x.numel() for x in xs))
