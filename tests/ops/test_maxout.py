"""``maxout``'s contract on every backend: ties go to the lowest piece, NaN and inf propagate as in the
reference, empty inputs work, outputs are fully written (poisoned first)."""
import pytest
import torch

from fitnets_fast import ops, reference

from _backends import ALL_PARAMS, DEVICES, INF, NAN, check, randn

DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_ties_go_to_lowest_piece(backend, channels_last, dtype):
    x = torch.randint(-1, 2, (3, 9, 4, 5)).to(device=DEVICES[backend], dtype=torch.float64)  # many exact ties
    view = (lambda x: (x.contiguous(memory_format=torch.channels_last),)) if channels_last else (lambda x: (x,))
    check(backend, "maxout", [x], (3,), dtype, ["x"], view=view)
    z = torch.zeros(2, 4, 3, dtype=dtype, device=DEVICES[backend], requires_grad=True)
    ops.maxout(z, 2, backend=backend).backward(torch.ones(2, 2, 3, dtype=dtype, device=z.device))
    assert torch.equal(z.grad[:, 0::2], torch.ones_like(z.grad[:, 0::2]))
    assert torch.equal(z.grad[:, 1::2], torch.zeros_like(z.grad[:, 1::2]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_nan_and_inf_propagate(backend, dtype):
    x = randn(backend, 2, 6, 4, 5)
    x[0, 1, 0, 0] = NAN          # NaN loses nothing: it wins its group
    x[0, 2:4, 1, 1] = NAN        # two NaN pieces: the first wins
    x[1, 0, 2, 2] = INF
    x[1, 3, 3, 3] = -INF         # -inf loses to any finite piece
    x[1, 4:6, 0, 4] = -INF       # all -inf: -inf out, first piece wins
    check(backend, "maxout", [x], (2,), dtype, ["x"])
    check(backend, "maxout", [x], (3,), dtype, ["x"], view=lambda x: (x.contiguous(memory_format=torch.channels_last),))


@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_empty(backend):
    check(backend, "maxout", [randn(backend, 0, 6, 3, 3)], (2,), torch.float32, ["x"])
    check(backend, "maxout", [randn(backend, 2, 6, 0, 3)], (3,), torch.float32, ["x"])


def test_more_pieces_than_the_cpp_index_holds_go_to_the_reference():
    """The cpp kernels' winner index is one byte: 300 pieces run on the reference under "auto", and the cpp
    backend asked for by name refuses with the reason."""
    pytest.importorskip("fitnets_fast._C")
    x = torch.randn(2, 300, 3)
    assert ops.backend_used("maxout", x, 300) == "reference"
    assert ops.backend_used("maxout", x, 2) == "cpp"
    assert torch.equal(ops.maxout(x, 300), reference.maxout(x, 300))
    with pytest.raises(ValueError, match="backend='cpp' cannot run maxout here: 300 pieces"):
        ops.maxout(x, 300, backend="cpp")
