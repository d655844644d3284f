"""The real CIFAR-10 of ../shared/data, unpacked into the standard layout once per test session."""
import os
import subprocess
import sys

import pytest
import torch

from fitnets_fast.data import load

MAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "make_cifar10.py")


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory):
    if not os.path.isfile(MAKE):
        pytest.skip(f"real CIFAR-10 not available: {os.path.normpath(MAKE)} is absent")
    pytest.importorskip("PIL", reason="make_cifar10.py needs Pillow to decode the JPEG archive")
    root = tmp_path_factory.mktemp("cifar10")
    subprocess.run([sys.executable, MAKE, str(root)], check=True, capture_output=True, timeout=300)
    return str(root)


def test_real_cifar10_has_50000_train_10000_test_balanced(cifar10_root):
    ds = load("cifar10", cifar10_root)
    assert ds.train.images.shape == (50000, 3, 32, 32) and ds.test.images.shape == (10000, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(ds.train.labels, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(ds.test.labels, minlength=10).tolist() == [1000] * 10
    # real photographs, not blank or constant files: pixel statistics in a plausible range
    mean = ds.train.images[:1000].float().mean()
    assert 90 < float(mean) < 160 and float(ds.train.images[:1000].float().std()) > 40
