"""``maxout_linear``'s contract on every backend: ties, NaN in a non-contiguous input, an empty batch,
outputs fully written (poisoned first)."""
import pytest
import torch

from _backends import ALL_PARAMS, DEVICES, NAN, check, randn

DTYPES = [torch.float64, torch.float32]
NAMES = ["x", "weight", "bias"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_ties_and_nan_in_a_transposed_input(backend, dtype):
    x = randn(backend, 7, 6)
    x[2, 3] = NAN
    w = torch.randint(-1, 2, (12, 7)).to(device=DEVICES[backend], dtype=torch.float64)
    w[1::3] = w[0::3]  # pieces 0 and 1 of every output tie
    check(backend, "maxout_linear", [x, w, randn(backend, 12)], (3,), dtype, NAMES, view=lambda x, w, b: (x.t(), w, b))


@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_empty_batch(backend):
    check(backend, "maxout_linear", [randn(backend, 0, 4), randn(backend, 6, 4), randn(backend, 6)], (2,),
          torch.float32, NAMES)
