"""Resident-tensor batches and the WindowAndFlip augmentation."""
import functools

import pytest
import torch

from fitnets_fast.config import Config, make_config
from fitnets_fast.data import Batches, window_and_flip


def _match_windows(x, out, pad):
    """Every (image, row offset, col offset, flipped) whose window of the zero-padded image equals the output image
    exactly (checked independently of the implementation, by brute force over all candidates)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    found = []
    for i in range(0, n, 50):
        windows = padded[i:i + 50].unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W)
        for img, flipped in ((out[i:i + 50], False), (out[i:i + 50].flip(-1), True)):
            hits = (windows == img[:, :, None, None]).flatten(4).all(4).all(1)  # (B, 2p+1, 2p+1)
            found += [(i + int(b), int(r), int(s), flipped) for b, r, s in hits.nonzero()]
    return found


def test_every_crop_is_a_window_of_the_padded_image_shared_by_channels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(500, 2, 12, 12, generator=g) + 0.5  # distinct nonzero values: windows are identifiable
    out = window_and_flip(x, pad=8, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    found = _match_windows(x, out, 8)
    # exactly one window per image (both channels cut at the same place)
    assert sorted(f[0] for f in found) == list(range(500))
    rows = {f[1] for f in found}
    cols = {f[2] for f in found}
    assert rows == set(range(17)) and cols == set(range(17))  # offsets 0..16 cover the whole padded image
    flips = sum(f[3] for f in found)
    assert 200 < flips < 300


@pytest.mark.parametrize("pad", [None, 4], ids=["default-8", "4"])
def test_crop_offsets_span_exactly_the_padding(pad):
    # The default is pylearn2's 8 px (offsets 0..16); 4 px is the ResNet recipe's (offsets 0..8).
    x = torch.rand(400, 1, 10, 10, generator=torch.Generator().manual_seed(0)) + 0.5
    g = torch.Generator().manual_seed(2)
    out = window_and_flip(x, generator=g) if pad is None else window_and_flip(x, pad=pad, generator=g)
    p = 8 if pad is None else pad
    found = _match_windows(x, out, p)
    assert sorted(f[0] for f in found) == list(range(400))
    assert {f[1] for f in found} == set(range(2 * p + 1)) and {f[2] for f in found} == set(range(2 * p + 1))


def test_runs_crop_with_8px_padding_unless_told_otherwise():
    assert Config().augment_pad == 8
    cifar = make_config("cifar10")
    assert cifar.augment == "window_and_flip" and cifar.augment_pad == 8
    assert make_config("cifar10", augment_pad=4).augment_pad == 4


def test_flip_rate_is_about_half():
    x = torch.tensor([[[[1.0, 2.0]]]]).expand(20000, 1, 1, 2)
    out = window_and_flip(x, pad=0, generator=torch.Generator().manual_seed(3))
    flipped = out[:, 0, 0, 0] == 2.0
    assert bool(((out[:, 0, 0, 0] == 1.0) | flipped).all())
    assert abs(float(flipped.float().mean()) - 0.5) < 0.015  # 4 standard deviations


def test_window_and_flip_is_deterministic_under_a_generator_and_keeps_dtype():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = window_and_flip(x, generator=torch.Generator().manual_seed(5))
    b = window_and_flip(x, generator=torch.Generator().manual_seed(5))
    c = window_and_flip(x, generator=torch.Generator().manual_seed(6))
    assert a.dtype == torch.uint8 and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="pad"):
        window_and_flip(x, pad=-1)
    with pytest.raises(TypeError, match="N, C, H, W"):
        window_and_flip(x[0])


def _data(n=1000):
    y = torch.arange(n)
    x = y.float().view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()  # each row encodes its index
    return x, y


def test_batches_are_full_shuffled_slices_with_labels_aligned():
    x, y = _data()
    b = Batches(x, y, 128, seed=0)
    assert len(b) == 7
    batches = list(b.epoch(0))
    assert len(batches) == 7 and all(xb.shape == (128, 3, 4, 4) for xb, _ in batches)
    seen = torch.cat([yb for _, yb in batches])
    assert len(set(seen.tolist())) == 896  # distinct rows, the last partial batch dropped
    assert seen.tolist() != sorted(seen.tolist())  # shuffled
    for xb, yb in batches:
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)
    unshuffled = list(Batches(x, y, 300, shuffle=False, drop_last=False).epoch(0))
    assert [len(yb) for _, yb in unshuffled] == [300, 300, 300, 100]
    assert torch.equal(torch.cat([yb for _, yb in unshuffled]), y)


def test_batches_depend_only_on_seed_and_epoch():
    x, y = _data()
    aug = functools.partial(window_and_flip, pad=2)

    def run(seed, epoch):
        return [(xb.clone(), yb.clone()) for xb, yb in Batches(x, y, 100, seed=seed, augment=aug).epoch(epoch)]

    a = Batches(x, y, 100, seed=4, augment=aug)
    for _ in a.epoch(0):
        pass  # consuming earlier epochs must not change later ones (a resumed run starts at epoch 3)
    e3 = [(xb.clone(), yb) for xb, yb in a.epoch(3)]
    fresh = run(4, 3)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e3, fresh))
    other_seed = run(5, 3)
    assert not torch.equal(torch.cat([p[1] for p in other_seed]), torch.cat([p[1] for p in fresh]))
    other_epoch = run(4, 4)
    assert not torch.equal(torch.cat([p[1] for p in other_epoch]), torch.cat([p[1] for p in fresh]))
    # same order, different augmentation draws with a different seed: check the crops themselves differ too
    unshuffled = [Batches(x, y, 100, seed=s, shuffle=False, augment=aug) for s in (4, 4, 5)]
    first = [next(iter(b.epoch(0)))[0] for b in unshuffled]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


def test_batches_reject_bad_arguments():
    x, y = _data(10)
    with pytest.raises(ValueError, match="same number"):
        Batches(x, y[:5], 2)
    with pytest.raises(ValueError, match="batch_size"):
        Batches(x, y, 0)
    with pytest.raises(ValueError, match="no batch"):
        Batches(x, y, 11)
    with pytest.raises(TypeError, match="augment"):
        Batches(x, y, 2, augment="flip")
    with pytest.raises(ValueError, match="epoch"):
        Batches(x, y, 2).epoch(-1)
