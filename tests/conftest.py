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


@pytest.fixture(autouse=True)
def _tf32_off():
    """Every test runs with TF32 forbidden (on a GPU PyTorch allows it for convolutions by default, which
    would make float32 references TF32 ones); a test about TF32 turns it on itself."""
    from fitnets_fast.testing import tf32

    with tf32(False):
        yield
