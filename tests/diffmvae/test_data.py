import numpy as np
import pytest
import torch

from diffmvae.data import PolyDigits, PolyDigitsDataModule
from diffmvae.data.datamodule import MissingModalities
from diffmvae.data.polydigits import TEXTURE_MEANS, background, render_digits, split_indices


def test_item_layout_and_range():
    ds = PolyDigits("val", num_modalities=3, seed=0)
    item = ds[0]
    assert set(item) == {"m0", "m1", "m2", "label"}
    for m in ("m0", "m1", "m2"):
        assert item[m].shape == (3, 28, 28) and item[m].dtype == torch.float32
        assert 0.0 <= item[m].min() and item[m].max() <= 1.0
    assert isinstance(item["label"], int) and 0 <= item["label"] <= 9


def test_deterministic_by_seed():
    a, b, c = PolyDigits("val", 2, seed=3), PolyDigits("val", 2, seed=3), PolyDigits("val", 2, seed=4)
    assert torch.equal(a.data, b.data) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.data, c.data)


def test_splits_are_disjoint_and_cover_the_digits():
    parts = [set(split_indices(s).tolist()) for s in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 1797


def test_test_handwriting_never_in_train():
    # The clean stroke images of every test example differ from every train one.
    from diffmvae.data.polydigits import _digits

    images, _ = _digits()
    train = images[split_indices("train")].reshape(-1, 64)
    test = images[split_indices("test")].reshape(-1, 64)
    dist = ((test[:, None, :] - train[None, :, :]) ** 2).sum(-1)
    duplicates = np.flatnonzero(dist.min(1) == 0)
    # load_digits itself holds a few exact duplicates; the split must not add more than those.
    assert len(duplicates) <= 2


def test_modalities_share_the_label_but_not_the_handwriting_or_background():
    from diffmvae.data.polydigits import _digits

    ds = PolyDigits("val", 4, seed=0)
    _, digit_labels = _digits()
    for m in range(4):  # every modality's handwriting instance is a drawing of the example's label
        assert np.array_equal(digit_labels[ds.instances[:, m]], ds.labels.numpy())
    assert (ds.instances[:, 1:] != ds.instances[:, :1]).mean() > 0.8  # ... mostly a different drawing of it
    assert all(ds[i]["label"] == int(ds.labels[i]) for i in range(5))
    assert len({tuple(background(k).flatten()[:50].tolist()) for k in range(10)}) == 10
    diffs = [(ds.data[:, 0].float() - ds.data[:, k].float()).abs().mean() for k in range(1, 4)]
    assert all(d > 10 for d in diffs)


def test_texture_settings_are_constructor_arguments_and_change_the_data_and_its_key():
    base, harder = PolyDigits("val", 2, length=8), PolyDigits("val", 2, length=8, texture_contrast=1.0)
    assert not torch.equal(base.data, harder.data)
    assert torch.equal(base.labels, harder.labels)
    a, b = PolyDigitsDataModule(num_modalities=2), PolyDigitsDataModule(num_modalities=2, texture_contrast=1.0)
    assert a.cache_key() != b.cache_key() and a.cache_key()["settings"]["texture_contrast"] == 0.4
    assert a.cache_key() == PolyDigitsDataModule(num_modalities=2, batch_size=7, num_workers=1).cache_key()  # loader settings do not count
    with pytest.raises(ValueError, match="texture_contrast and texture_means must lie in"):
        PolyDigits("val", 2, texture_contrast=2.0)


@pytest.mark.parametrize("m", [2, 10])
def test_modality_range(m):
    assert len(PolyDigits("val", m, length=4).modalities) == m


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_modalities must be in 1..10, got 11"):
        PolyDigits("val", 11)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        PolyDigits("dev")


def test_missing_modalities_wrapper_and_datamodule():
    ds = PolyDigits("val", 3, length=40)
    dm = PolyDigitsDataModule(num_modalities=3)
    wrapped = MissingModalities(ds, dm.specs, rate=0.5, seed=0)
    presents = torch.stack([wrapped[i]["present"] for i in range(40)])
    assert presents.any(1).all() and (~presents).any()
    for i in range(40):
        item = wrapped[i]
        for k, m in enumerate(ds.modalities):
            if not item["present"][k]:
                assert item[m].abs().sum() == 0
    dm = PolyDigitsDataModule(num_modalities=3, batch_size=8, missing_rate=0.3, train_length=32)
    assert all(spec.is_image and spec.shape == (3, 28, 28) for spec in dm.specs.values()) and dm.modalities == ("m0", "m1", "m2")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["present"].shape == (8, 3) and batch["m0"].shape == (8, 3, 28, 28)


@pytest.mark.parametrize("k", range(10))
def test_texture_mean_keeps_strokes_visible(k):
    # Strokes invert the texture: a mid-grey mean would make the expected image digit-free.
    assert float(background(k).mean()) == pytest.approx(min(TEXTURE_MEANS, key=lambda t: abs(t - float(background(k).mean()))), abs=0.02)
    assert abs(float(background(k).mean()) - 0.5) > 0.2


def test_digits_are_centred_20x20_in_28x28():
    strokes = render_digits(np.ones((2, 8, 8), dtype=np.float32))
    assert strokes.shape == (2, 1, 28, 28)
    inside = strokes[:, :, 4:24, 4:24]
    assert torch.allclose(inside, torch.ones_like(inside))
    assert float(strokes.sum()) == pytest.approx(2 * 20 * 20)  # nothing outside the centred 20x20 box


def test_masked_copies_keep_the_unmasked_pixels_and_grey_out_the_patches():
    from diffmvae.data.masking import FILL, MaskedCopies

    base = PolyDigits("val", 2, seed=0)
    ds = MaskedCopies(base, ["m0"], patch=7, ratio=(0.25, 0.75), seed=1)
    fractions = []
    for i in range(20):
        item = ds[i]
        mask, masked, image = item["m0_mask"], item["m0_masked"], item["m0"]
        assert mask.shape == (1, 28, 28) and set(mask.unique().tolist()) <= {0.0, 1.0}
        keep = mask.expand_as(image) == 0
        assert torch.equal(masked[keep], image[keep]) and torch.all(masked[~keep] == FILL)
        assert torch.equal(item["m1"], base[i]["m1"]) and "m1_masked" not in item
        cells = mask[0, ::7, ::7]  # one pixel per 7x7 patch: every patch is all in or all out
        assert torch.equal(mask[0], torch.kron(cells, torch.ones(7, 7)))
        fractions.append(mask.mean().item())
    assert min(fractions) >= 0.25 - 1 / 16 and max(fractions) <= 0.75 + 1 / 16 and max(fractions) - min(fractions) > 0.1
    again = MaskedCopies(base, ["m0"], patch=7, ratio=(0.25, 0.75), seed=1)
    assert torch.equal(again[3]["m0_mask"], ds[3]["m0_mask"])
    assert not torch.equal(MaskedCopies(base, ["m0"], 7, (0.25, 0.75), seed=2)[3]["m0_mask"], ds[3]["m0_mask"])


def test_datamodule_declares_the_masked_copy_and_the_label_modality():
    dm = PolyDigitsDataModule(num_modalities=1, masked=["m0"], label_modality=True, train_length=8, batch_size=4)
    assert list(dm.specs) == ["m0", "m0_masked", "label"]
    assert dm.specs["label"].num_classes == 10 and dm.specs["label"].judge == "value"
    assert dm.cache_key() != PolyDigitsDataModule(num_modalities=1, train_length=8).cache_key()
    with pytest.raises(ValueError, match="'m3'"):
        PolyDigitsDataModule(num_modalities=2, masked=["m3"])
    with pytest.raises(ValueError, match="ratio"):
        PolyDigitsDataModule(num_modalities=1, masked=["m0"], mask_ratio=1.5)


def test_keep_selects_modalities_with_the_same_examples():
    """`keep` trains on a subset of modalities; each keeps its own images, so models trained on {m0, m1} and {m1, m2} see
    the same m1 and the same labels (what composing them across models relies on)."""
    from diffmvae.data import PolyDigitsDataModule

    full = PolyDigitsDataModule(num_modalities=3, train_length=20).dataset("test")
    pair = PolyDigitsDataModule(num_modalities=3, train_length=20, keep=["m1", "m2"])
    assert tuple(pair.specs) == ("m1", "m2")
    item, whole = pair.dataset("test")[5], full[5]
    assert set(item) == {"m1", "m2", "label"} and item["label"] == whole["label"]
    assert torch.equal(item["m1"], whole["m1"]) and torch.equal(item["m2"], whole["m2"])
    for keep in (["m3"], ["m1", "m1"]):
        with pytest.raises(ValueError, match="keep must name distinct image modalities of m0, m1, m2"):
            PolyDigitsDataModule(num_modalities=3, keep=keep)


def test_the_paper_masks_black_out_up_to_ten_random_squares():
    """mask_style paper (Chen et al. 2024 App. E.2 at 28 px): Uniform{0..10} squares of 7 px at random corners, cut at the
    border, set to black; the unmasked pixels untouched; deterministic by seed and index."""
    from diffmvae.data.masking import MaskedCopies

    base = PolyDigits("val", 1, seed=0)
    ds = MaskedCopies(base, ["m0"], patch=7, seed=1, style="paper", max_patches=10)
    shares = []
    for i in range(120):
        item = ds[i]
        mask, masked, image = item["m0_mask"], item["m0_masked"], item["m0"]
        keep = mask.expand_as(image) == 0
        assert torch.equal(masked[keep], image[keep]) and torch.all(masked[~keep] == 0)
        shares.append(mask.mean().item())
    shares = torch.tensor(shares)
    assert (shares == 0).sum() >= 3  # m = 0 is drawn about one time in eleven
    assert shares.max() <= 10 * 49 / 784 and shares.max() > 4 * 49 / 784
    assert not torch.equal(torch.kron(ds[5]["m0_mask"][0, ::7, ::7], torch.ones(7, 7)), ds[5]["m0_mask"][0]) or shares[5] == 0
    assert torch.equal(MaskedCopies(base, ["m0"], 7, seed=1, style="paper")[7]["m0_mask"], ds[7]["m0_mask"])
    with pytest.raises(ValueError, match="mask_style must be grid or paper"):
        PolyDigitsDataModule(num_modalities=1, masked=["m0"], mask_style="blocks", train_length=8, batch_size=4)
