"""The CUB and CelebAMask-HQ loaders on tiny files in the releases' exact layouts (tests/release_layouts.py)."""

import shutil

import numpy as np
import pytest
import torch
from release_layouts import make_celebamask, make_cub

from diffmvae.data import CUB, CelebAMaskHQ, CelebAMaskHQDataModule, CUBDataModule
from diffmvae.data.order import EpochSampler
from diffmvae.io import DiffMVAEError


@pytest.fixture
def cub_root(tmp_path):
    root = tmp_path / "CUB_200_2011"
    return root, make_cub(root)


@pytest.fixture
def celeba_root(tmp_path):
    root = tmp_path / "CelebAMask-HQ"
    return root, make_celebamask(root)


def test_cub_splits_labels_and_crop(cub_root):
    root, rows = cub_root
    train_ids = [i for i, r in rows.items() if r[2]]
    test = CUB(root, "test", image_size=16)
    train, val = CUB(root, "train", image_size=16, val_fraction=0.25), CUB(root, "val", image_size=16, val_fraction=0.25)
    assert len(test) == len(rows) - len(train_ids)
    assert sorted(train.ids + val.ids) == train_ids and not set(train.ids) & set(val.ids) and len(val) == 2
    assert test.labels.tolist() == [rows[i][1] - 1 for i in test.ids]  # classes 1..200 -> 0..199
    item = test[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    # The box is filled with the class colour and the rest is black: a cropped image is that colour all over.
    c = rows[test.ids[0]][1]
    colour = torch.tensor([40 * c % 256, 200, 255 - 60 * c % 256]) / 255.0
    assert (item["image"].mean(dim=(1, 2)) - colour).abs().max() < 0.06  # JPEG smears colour a little; uncropped it would be ~4x darker
    assert item["image"].amin(dim=(1, 2)).min() > colour.min() - 0.1  # no black border: the crop is the box


def test_cub_caption_drawn_per_epoch_fixed_for_test(cub_root):
    root, _ = cub_root
    train, test = CUB(root, "train", image_size=8, val_fraction=0.0), CUB(root, "test", image_size=8)
    n = len(train)
    per_epoch = [train[0 + e * n]["caption"] for e in range(12)]
    assert len(set(per_epoch)) > 1 and all(0 <= c < 10 for c in per_epoch)
    assert per_epoch == [train[e * n]["caption"] for e in range(12)]  # deterministic
    assert len({test[0]["caption"], test[0]["caption"]}) == 1
    sampler = EpochSampler(n, seed=3, offset_epochs=True)
    sampler.set_epoch(2)
    assert sorted(sampler) == list(range(2 * n, 3 * n))


def test_cub_datamodule_tokens_and_specs(cub_root):
    root, rows = cub_root
    dm = CUBDataModule(str(root), image_size=16, max_length=12, batch_size=2, val_fraction=0.0)
    assert dm.specs["image"].shape == (3, 16, 16) and dm.specs["text"].is_text
    test = dm.dataset("test")
    item = test[1]
    text = dm.decode_text("text", item["text"]["input_ids"][None])[0]
    c = rows[test.base.ids[1]][1]
    assert text.startswith(f"a bird of class {c} caption") and item["label"] == c - 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["text"]["input_ids"].shape == (2, 12)


def test_cub_errors_name_the_file(tmp_path):
    root = tmp_path / "cub"
    with pytest.raises(DiffMVAEError, match="CUB folder .*cub does not exist"):
        CUB(root)
    rows = make_cub(root)
    name = rows[1][0]
    caption = (root / "text_c10" / name).with_suffix(".txt")
    caption.write_text("only one caption\n" * 9)
    with pytest.raises(DiffMVAEError, match=f"{caption.name} has 9 captions, expected 10"):
        CUB(root, "train")
    caption.write_text("c\n" * 10)
    (root / "images" / name).write_bytes(b"not a jpeg")
    with pytest.raises(DiffMVAEError, match=f"CUB image file .*{rows[1][0].split('/')[1]} is not a readable image"):
        CUB(root, "train", val_fraction=0.0)[0]
    (root / "bounding_boxes.txt").write_text("1 1 2 3\n")
    with pytest.raises(DiffMVAEError, match="bounding_boxes.txt line 1: expected 5 fields, got 4"):
        CUB(root)
    (root / "image_class_labels.txt").unlink()
    with pytest.raises(DiffMVAEError, match="CUB file .*image_class_labels.txt does not exist"):
        CUB(root)


def test_celebamask_splits_mask_union_and_attributes(celeba_root):
    root, made = celeba_root
    splits = {s: CelebAMaskHQ(root, s, image_size=8) for s in ("train", "val", "test")}
    assert [splits[s].indices for s in ("train", "val", "test")] == [list(range(r, 12, 3)) for r in range(3)]
    item = splits["train"][0]  # image 0: hair (top quarter) + left eye (bottom-left quarter); skin left out
    assert item["image"].shape == (3, 8, 8) and item["mask"].shape == (1, 8, 8) and item["attributes"].shape == (18,)
    expected = torch.zeros(8, 8)
    expected[:2] = 1
    expected[4:, :4] = 1
    assert torch.equal(item["mask"][0], expected)
    odd = splits["val"][0]  # image 1 has no eye mask: only the hair
    assert odd["mask"][0].sum() == 16 and set(odd["mask"].unique().tolist()) <= {0.0, 1.0}
    cols = made["columns"]
    assert torch.equal(splits["test"].attributes, torch.tensor(made["attributes"][2::3][:, cols], dtype=torch.float32))
    dm = CelebAMaskHQDataModule(str(root), image_size=8, batch_size=2)
    assert dm.label_key == "attributes" and dm.specs["mask"].judge == "match" and dm.specs["attributes"].kind == "attributes"


def test_celebamask_errors_name_the_file(celeba_root):
    root, _ = celeba_root
    path = root / "CelebAMask-HQ-attribute-anno.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1].replace("Smiling", "Smile"), *lines[2:]]))
    with pytest.raises(DiffMVAEError, match="attribute file .* has no attribute 'Smiling'"):
        CelebAMaskHQ(root)
    path.write_text("\n".join([*lines[:3], lines[3].replace("-1", "2", 1), *lines[4:]]))
    with pytest.raises(DiffMVAEError, match="anno.txt line 4: attribute values must be 1 or -1"):
        CelebAMaskHQ(root)
    path.write_text("\n".join(lines))
    (root / "CelebA-HQ-to-CelebA-mapping.txt").unlink()
    with pytest.raises(DiffMVAEError, match="mapping file .*CelebA-HQ-to-CelebA-mapping.txt does not exist"):
        CelebAMaskHQ(root)
    shutil.rmtree(root / "CelebAMask-HQ-mask-anno")
    with pytest.raises(DiffMVAEError, match="CelebAMask-HQ mask folder .* does not exist"):
        CelebAMaskHQ(root)


def test_unreadable_celebamask_image(celeba_root):
    root, _ = celeba_root
    (root / "CelebA-HQ-img" / "0.jpg").write_bytes(b"\x89PNG broken")
    with pytest.raises(DiffMVAEError, match=r"CelebAMask-HQ image file .*0.jpg is not a readable image"):
        CelebAMaskHQ(root, "train")[0]
    assert np.isfinite(CelebAMaskHQ(root, "val")[0]["image"].numpy()).all()
