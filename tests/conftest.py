"""Test-wide set-up. Without CUDA, Triton kernels run under the interpreter on CPU tensors; that must be
chosen before triton is first imported, hence here, before anything imports fitnets_fast."""
import os

import pytest

if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:  # pragma: no cover
        pass

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
