"""The ``cifar100_resnet`` preset: two epochs of every row on a tiny fake CIFAR-100 folder."""
import os
import pickle

import numpy as np

from fitnets_fast import config, trainer
from fitnets_fast.run_files import RunDir


def _fake_cifar100(parent, n=24):
    """``parent/cifar-100-python`` with ``n`` random train and test images (pickled dicts as the real files)."""
    rng = np.random.default_rng(0)
    folder = os.path.join(parent, "cifar-100-python")
    os.makedirs(folder)
    for part in ("train", "test"):
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
             "coarse_labels": [int(v) for v in rng.integers(0, 20, n)]}
        with open(os.path.join(folder, part), "wb") as f:
            pickle.dump(d, f)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return parent


def test_cifar100_resnet_preset_runs_every_row(tmp_path):
    cfg = config.make_config("cifar100_resnet")
    assert (cfg.teacher, cfg.student, cfg.lr_milestones, cfg.weight_decay) == ("resnet56", "resnet20",
                                                                              [150, 180, 210], 5e-4)
    data_dir = _fake_cifar100(str(tmp_path / "data"))
    summary = trainer.train("cifar100_resnet", out_dir=str(tmp_path / "run"), data_dir=data_dir, device="cpu",
                            quiet=True, teacher="resnet8", student="resnet8", teacher_max_epochs=2, max_epochs=2,
                            hint_max_epochs=2, batch_size=8, speed_repeats=1, lr_milestones=[1], num_threads=1)
    rows = {r["row"]: r for r in summary["rows"]}
    assert list(rows) == ["teacher", "backprop", "kd", "fitnets"]
    assert all(r["epochs"] == 2 for r in rows.values())
    records = RunDir(tmp_path / "run").read_metrics()
    assert [r["lr"] for r in records if r["row"] == "backprop"] == [0.05, 0.05 * 0.1]   # step decay after epoch 1
    saved = (tmp_path / "run" / "config.json").read_text()
    assert '"hint": "layer2"' in saved and '"guided": "layer2"' in saved
