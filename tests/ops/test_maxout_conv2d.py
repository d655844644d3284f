"""``maxout_conv2d``'s contract on every backend: ties between pieces (with a bias) and between pooling
window pixels, NaN/inf, empty batches, pooled and not, outputs fully written (poisoned first)."""
import pytest
import torch

from _backends import ALL_PARAMS, DEVICES, INF, NAN, check, randn

DTYPES = [torch.float64, torch.float32]
NAMES = ["x", "weight", "bias"]


def _ints(backend, *shape):
    return torch.randint(-1, 2, shape).to(device=DEVICES[backend], dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_ties_with_bias(backend, dtype):
    b = torch.tensor([0.0, 1, 1, 0, 2, 2, -1, 1], dtype=torch.float64, device=DEVICES[backend])
    check(backend, "maxout_conv2d", [_ints(backend, 2, 2, 5, 5), _ints(backend, 8, 2, 1, 1), b], (2, 1, 0), dtype,
          NAMES)
    w = randn(backend, 2, 4, 3, 3).repeat_interleave(2, dim=0)  # identical pieces: ties everywhere, no bias
    check(backend, "maxout_conv2d", [randn(backend, 2, 4, 5, 6), w], (None, 2, 1, 1), dtype, NAMES[:2])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_pooled_ties_nan_and_inf(backend, dtype):
    """Ties between pieces and between window pixels (integer data), NaN pixels and -inf windows: the
    winners, and so the gradients, match conv + maxout + F.max_pool2d."""
    x, w = _ints(backend, 2, 2, 7, 7), _ints(backend, 6, 2, 1, 1)
    b = torch.tensor([0.0, 1, 1, 0, -INF, -INF], dtype=torch.float64, device=x.device)  # channel 2: all -inf
    x[0, 0, 2, 2] = x[0, 0, 3, 3] = NAN  # two NaN pixels in one window: the later one wins, as in max_pool2d
    x[1, 1, 0, 0] = NAN
    for pool in [(2, 2), (3, 2)]:
        check(backend, "maxout_conv2d", [x, w, b], (2, 1, 0, pool), dtype, NAMES)


@pytest.mark.parametrize("pool", [None, (2, 2)])
@pytest.mark.parametrize("backend", ALL_PARAMS)
def test_empty_batch(backend, pool):
    check(backend, "maxout_conv2d", [randn(backend, 0, 3, 6, 6), randn(backend, 8, 3, 3, 3), randn(backend, 8)],
          (2, 1, 1, pool), torch.float32, NAMES)
