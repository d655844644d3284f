"""Loaders read files written here in the exact on-disk formats; missing, truncated and corrupt files each give
a clear error naming the file (and, for missing ones, the layout)."""
import gzip
import os
import pickle

import numpy as np
import pytest
import scipy.io
import torch

from fitnets_fast.data import CorruptFileError, load

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _key(name, bytes_keys):
    return name.encode() if bytes_keys else name


def _dump(path, d, bytes_keys, protocol=None):
    with open(path, "wb") as f:
        pickle.dump({_key(k, bytes_keys): v for k, v in d.items()}, f,
                    protocol=protocol or (2 if bytes_keys else 4))


def write_cifar10(parent, n_per_batch=6, bytes_keys=False, seed=0, protocol=None):
    """Write ``parent/cifar-10-batches-py`` (5 train batches + test batch + meta) of random images.
    Returns (folder, train data (N, 3072), train labels, test data, test labels)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(parent, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    datas, labels = [], []
    for b in range(6):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        lab = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        name = f"data_batch_{b + 1}" if b < 5 else "test_batch"
        _dump(os.path.join(folder, name), {"batch_label": f"batch {b}", "labels": lab, "data": data,
                                           "filenames": [f"{b}_{i}.png" for i in range(n_per_batch)]}, bytes_keys,
              protocol)
        datas.append(data)
        labels.append(lab)
    names = [n.encode() for n in CIFAR10_NAMES] if bytes_keys else CIFAR10_NAMES
    _dump(os.path.join(folder, "batches.meta"), {"label_names": names, "num_vis": 3072}, bytes_keys)
    return (folder, np.concatenate(datas[:5]), np.concatenate(labels[:5]), datas[5], np.array(labels[5]))


@pytest.mark.parametrize("bytes_keys,protocol", [(False, 4), (True, 2), (False, 5)],
                         ids=["str-keys", "bytes-keys-py2-protocol", "str-keys-protocol-5"])
@pytest.mark.parametrize("use_parent", [False, True], ids=["folder", "parent"])
def test_cifar10_reads_standard_layout(tmp_path, bytes_keys, protocol, use_parent):
    folder, train_x, train_y, test_x, test_y = write_cifar10(str(tmp_path), bytes_keys=bytes_keys, protocol=protocol)
    ds = load("cifar10", str(tmp_path) if use_parent else folder)
    assert ds.train.images.shape == (30, 3, 32, 32) and ds.test.images.shape == (6, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.classes == CIFAR10_NAMES
    # rows are CHW: channel c, row h, column w is column c*1024 + h*32 + w
    assert torch.equal(ds.train.images, torch.from_numpy(train_x).view(30, 3, 32, 32))
    assert int(ds.train.images[7, 2, 5, 9]) == int(train_x[7, 2 * 1024 + 5 * 32 + 9])
    assert ds.train.labels.tolist() == train_y.tolist() and ds.test.labels.tolist() == test_y.tolist()
    assert torch.equal(ds.test.images, torch.from_numpy(test_x).view(6, 3, 32, 32))


def write_cifar100(parent, n=8, bytes_keys=False):
    rng = np.random.default_rng(1)
    folder = os.path.join(parent, "cifar-100-python")
    os.makedirs(folder)
    out = {}
    for part in ("train", "test"):
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
             "coarse_labels": [int(v) for v in rng.integers(0, 20, n)]}
        _dump(os.path.join(folder, part), d, bytes_keys)
        out[part] = d
    fine = [f"fine{i}" for i in range(100)]
    coarse = [f"coarse{i}" for i in range(20)]
    enc = (lambda names: [s.encode() for s in names]) if bytes_keys else (lambda names: names)
    _dump(os.path.join(folder, "meta"), {"fine_label_names": enc(fine), "coarse_label_names": enc(coarse)},
          bytes_keys)
    return folder, out, fine, coarse


@pytest.mark.parametrize("bytes_keys", [False, True], ids=["str-keys", "bytes-keys"])
def test_cifar100_fine_and_coarse_labels(tmp_path, bytes_keys):
    folder, out, fine, coarse = write_cifar100(str(tmp_path), bytes_keys=bytes_keys)
    ds = load("cifar100", str(tmp_path))
    assert ds.classes == fine and ds.train.labels.tolist() == out["train"]["fine_labels"]
    assert ds.test.images.shape == (8, 3, 32, 32)
    assert torch.equal(ds.test.images.reshape(8, -1), torch.from_numpy(out["test"]["data"]))
    ds = load("cifar100", folder, coarse=True)
    assert ds.classes == coarse and ds.test.labels.tolist() == out["test"]["coarse_labels"]


def _idx_bytes(array, ndim):
    header = bytes([0, 0, 0x08, ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder, n_train=12, n_test=5, gz=False):
    rng = np.random.default_rng(2)
    os.makedirs(folder, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, a in arrays.items():
        raw = _idx_bytes(a, a.ndim)
        if gz:
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_plain_and_gzipped(tmp_path, gz):
    arrays = write_mnist(str(tmp_path / "MNIST" / "raw"), gz=gz)
    ds = load("mnist", str(tmp_path))
    assert ds.train.images.shape == (12, 1, 28, 28) and ds.test.images.shape == (5, 1, 28, 28)
    assert ds.train.images.dtype == torch.uint8 and ds.test.labels.dtype == torch.int64
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]).to(torch.uint8))
    assert ds.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.classes == [str(d) for d in range(10)]


def write_svhn_mat(path, n, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
    y[0, 0] = 10  # at least one "digit 0"
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y


def test_svhn_mat_files_with_extra(tmp_path):
    folder = tmp_path / "svhn"
    folder.mkdir()
    x, y = write_svhn_mat(str(folder / "train_32x32.mat"), 9)
    write_svhn_mat(str(folder / "test_32x32.mat"), 4, seed=4)
    ds = load("svhn", str(tmp_path))
    assert ds.train.images.shape == (9, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    assert ds.extra_start is None
    # X[h, w, c, n] -> images[n, c, h, w]; label 10 means digit 0
    assert int(ds.train.images[2, 1, 3, 4]) == int(x[3, 4, 1, 2])
    assert ds.train.labels.tolist() == [int(v) % 10 for v in y[:, 0]] and ds.train.labels[0] == 0
    with pytest.raises(FileNotFoundError, match="extra_32x32.mat"):
        load("svhn", str(folder), extra=True)
    ex, _ = write_svhn_mat(str(folder / "extra_32x32.mat"), 5, seed=5)
    ds = load("svhn", str(folder), extra=True)
    assert len(ds.train) == 14 and ds.extra_start == 9
    assert int(ds.train.images[9 + 3, 2, 0, 31]) == int(ex[0, 31, 2, 3])


def test_digits_is_sklearn_bundled_set_with_fixed_split():
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = load("digits")
    assert ds.train.images.shape == (1437, 1, 8, 8) and ds.test.images.shape == (360, 1, 8, 8)
    assert ds.train.images.dtype == torch.uint8 and int(ds.train.images.max()) == 255
    assert ds.train.labels.tolist() == ref.target[:1437].tolist()
    assert ds.test.labels.tolist() == ref.target[1437:].tolist()
    expect = np.round(ref.images[1437:] * 255 / 16).astype(np.uint8)
    assert np.array_equal(ds.test.images[:, 0].numpy(), expect)
    assert ds.classes == [str(d) for d in range(10)]


def test_synthetic_is_seeded_balanced_and_learnable():
    a = load("synthetic", n_train=400, n_test=200, num_classes=4, image_shape=(2, 8, 8), seed=7)
    b = load("synthetic", n_train=400, n_test=200, num_classes=4, image_shape=(2, 8, 8), seed=7)
    c = load("synthetic", n_train=400, n_test=200, num_classes=4, image_shape=(2, 8, 8), seed=8)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.train.images.shape == (400, 2, 8, 8) and a.train.images.dtype == torch.uint8
    assert torch.bincount(a.train.labels).tolist() == [100] * 4 and a.classes == [f"class{i}" for i in range(4)]
    # learnable: nearest class mean (fitted on train) classifies the test images far above chance (25%)
    xtr, xte = a.train.images.flatten(1).float(), a.test.images.flatten(1).float()
    centroids = torch.stack([xtr[a.train.labels == k].mean(0) for k in range(4)])
    accuracy = (torch.cdist(xte, centroids).argmin(1) == a.test.labels).float().mean()
    assert accuracy > 0.9


def test_load_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="name must be one of"):
        load("imagenet")
    with pytest.raises(TypeError, match="extra"):
        load("cifar10", str(tmp_path), extra=True)
    with pytest.raises(ValueError, match="built in"):
        load("digits", str(tmp_path))
    with pytest.raises(ValueError, match="image_shape"):
        load("synthetic", image_shape=(8, 8))


# ---- missing, truncated and corrupt files ----------------------------------------------------------------------

def test_missing_folder_names_files_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load("cifar10", str(tmp_path / "nowhere"))
    assert "cifar-10-batches-py" in str(e.value) and "data_batch_1" in str(e.value)
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        load("svhn", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load("mnist", str(tmp_path))


def test_missing_one_cifar_batch_is_not_a_partial_data_set(tmp_path):
    folder = write_cifar10(str(tmp_path))[0]
    os.remove(os.path.join(folder, "data_batch_3"))
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3"):
        load("cifar10", str(tmp_path))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-shape", "label-count"])
def test_damaged_cifar_batch_names_the_file(tmp_path, damage):
    folder = write_cifar10(str(tmp_path))[0]
    path = os.path.join(folder, "data_batch_2")
    if damage == "truncate":
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[: len(raw) // 2])
    elif damage == "garbage":
        open(path, "wb").write(np.random.default_rng(9).bytes(3000))
    elif damage == "wrong-shape":
        _dump(path, {"data": np.zeros((6, 1024), np.uint8), "labels": [0] * 6}, False)
    else:
        _dump(path, {"data": np.zeros((6, 3072), np.uint8), "labels": [0] * 5}, False)
    with pytest.raises(CorruptFileError) as e:
        load("cifar10", folder)
    assert e.value.path == path and "data_batch_2" in str(e.value) and "3072" in str(e.value)


def test_pickle_cannot_run_code(tmp_path):
    folder = write_cifar10(str(tmp_path))[0]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(CorruptFileError, match="refusing to load"):
        load("cifar10", folder)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("damage", ["truncate", "magic", "trailing"])
def test_damaged_idx_names_the_file(tmp_path, gz, damage):
    write_mnist(str(tmp_path), gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    path = os.path.join(str(tmp_path), name)
    raw = gzip.decompress(open(path, "rb").read()) if gz else open(path, "rb").read()
    raw = {"truncate": raw[:-100], "magic": b"\x00\x00\x0d\x03" + raw[4:], "trailing": raw + b"\x00"}[damage]
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(raw)
    with pytest.raises(CorruptFileError) as e:
        load("mnist", str(tmp_path))
    assert e.value.path == path
    assert {"truncate": "truncated", "magic": "magic", "trailing": "longer"}[damage] in str(e.value)


def test_corrupt_gzip_stream_names_the_file(tmp_path):
    write_mnist(str(tmp_path), gz=True)
    path = os.path.join(str(tmp_path), "train-labels-idx1-ubyte.gz")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) - 6])  # cut the gzip trailer and part of the stream
    with pytest.raises(CorruptFileError) as e:
        load("mnist", str(tmp_path))
    assert e.value.path == path


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no-X"])
def test_damaged_mat_names_the_file(tmp_path, damage):
    write_svhn_mat(str(tmp_path / "train_32x32.mat"), 6)
    write_svhn_mat(str(tmp_path / "test_32x32.mat"), 3)
    path = str(tmp_path / "test_32x32.mat")
    if damage == "truncate":
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[: len(raw) // 2])
    elif damage == "garbage":
        open(path, "wb").write(np.random.default_rng(9).bytes(5000))
    else:
        scipy.io.savemat(path, {"images": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(CorruptFileError) as e:
        load("svhn", str(tmp_path))
    assert e.value.path == path and "test_32x32.mat" in str(e.value)
