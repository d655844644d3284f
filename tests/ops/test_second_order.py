"""Second-order gradients: the reference passes ``gradgradcheck`` in float64; the fused backends, whose
backwards use saved non-differentiable buffers, refuse ``create_graph=True`` with an error naming the op
and the way out, instead of returning wrong second derivatives."""
import pytest
import torch

from fitnets_fast import ops

from _backends import ALL_PARAMS, DEVICES

# Each case: the public op's float64 tensor inputs (shapes) and its remaining arguments.
CASES = {
    "maxout": (lambda r: [r(2, 6, 3)], (3,)),
    "maxout_conv2d": (lambda r: [r(2, 2, 5, 4), r(6, 2, 2, 3), r(6)], (2, 1, 1)),
    "maxout_conv2d_pooled": (lambda r: [r(1, 2, 6, 5), r(4, 2, 2, 2), r(4)], (2, 1, 0, (2, 2))),
    "maxout_linear": (lambda r: [r(3, 5), r(6, 5), r(6)], (3,)),
    "hint_loss": (lambda r: [r(2, 3, 4, 4), r(2, 2, 3, 3), r(4, 3, 2, 2), r(4)], (2, 0)),
    "kd_loss": (lambda r: [r(3, 5), r(3, 5)], (torch.tensor([0, 4, 2]), 2.0, 0.5, None, 1.0, "mean")),
}


def _call(case, backend):
    make, rest = CASES[case]
    device = DEVICES[backend]
    tensors = make(lambda *s: torch.randn(*s, dtype=torch.float64, device=device, requires_grad=True))
    rest = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in rest)
    op = getattr(ops, case.replace("_pooled", ""))
    return tensors, lambda *ts: op(*ts, *rest, backend=backend)


@pytest.mark.parametrize("case", CASES)
def test_reference_passes_gradgradcheck(case):
    tensors, fn = _call(case, "reference")
    assert torch.autograd.gradgradcheck(fn, tensors)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", [p for p in ALL_PARAMS if p.values[0] != "reference"])
def test_fused_backends_refuse_create_graph(backend, case):
    tensors, fn = _call(case, backend)
    out = fn(*tensors)
    first = torch.autograd.grad(out.sum(), tensors)  # first order is fine
    assert all(g is not None for g in first)
    with pytest.raises(RuntimeError, match=rf'{case.split("_pooled")[0]}.*{backend} backend has no second-order '
                                           r'gradients.*backend="reference"'):
        torch.autograd.grad(fn(*tensors).sum(), tensors, create_graph=True)
