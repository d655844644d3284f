"""``maxout_linear`` on the C++ kernels: PyTorch's bias-free matmul, then ``maxout_bias`` (bias + maxout in
one pass, saving only the one-byte winning piece for the backward; see ``fitnets_fast.cpp.maxout``). With
``pieces=1`` there is nothing to fuse: the layer is PyTorch's biased linear layer."""
from __future__ import annotations

import torch.nn.functional as F

from .maxout import maxout_bias


def maxout_linear_impl(x, weight, bias, pieces):
    """See ``fitnets_fast.reference.maxout_linear`` (at most ``MAX_PIECES`` pieces)."""
    if pieces == 1:
        return F.linear(x, weight, bias)
    return maxout_bias(F.linear(x, weight), bias, pieces)[0]
