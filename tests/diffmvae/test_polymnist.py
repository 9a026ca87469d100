"""PolyMNIST from a local folder in the published layout, on tiny files made here."""

import pytest
import torch
from tiny_run import make_polymnist

from diffmvae.data import PolyMNIST, PolyMNISTDataModule


def test_reads_the_published_layout(tmp_path):
    root = make_polymnist(tmp_path, n_train=20, n_test=6, num_modalities=3)
    test = PolyMNIST(root, "test", num_modalities=3)
    item = test[2]
    assert set(item) == {"m0", "m1", "m2", "label"} and item["m1"].shape == (3, 28, 28)
    assert 0 <= item["m0"].min() and item["m0"].max() <= 1 and item["m0"].dtype == torch.float32
    name = next((root / "test" / "m0").glob("2.*.png")).name
    assert item["label"] == int(name.split(".")[1])
    train, val = PolyMNIST(root, "train", 3, val_fraction=0.25), PolyMNIST(root, "val", 3, val_fraction=0.25)
    assert len(train) == 15 and len(val) == 5
    assert not {p[0] for p in train.files} & {p[0] for p in val.files}
    dm = PolyMNISTDataModule(str(root), num_modalities=3, batch_size=4)
    assert dm.modalities == ("m0", "m1", "m2") and len(dm.dataset("test")) == 6


def test_layout_errors_name_the_file(tmp_path):
    root = make_polymnist(tmp_path, num_modalities=2)
    with pytest.raises(FileNotFoundError, match=r"PolyMNIST folder .*m2 does not exist"):
        PolyMNIST(root, "train", num_modalities=3)
    victim = next((root / "train" / "m1").glob("0.*.png"))
    digit = int(victim.name.split(".")[1])
    victim.rename(victim.with_name(f"0.{(digit + 1) % 10}.png"))
    with pytest.raises(ValueError, match=r"has digit"):
        PolyMNIST(root, "train", num_modalities=2)
    (root / "test" / "m0" / "odd.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"odd.png is not named INDEX.DIGIT.png"):
        PolyMNIST(root, "test", num_modalities=2)
