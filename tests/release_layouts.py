"""Tiny copies of the official releases' folder layouts (CUB-200-2011 with Reed et al.'s captions, CelebAMask-HQ),
written with known content so that tests can check what the loaders read: crops, splits, mask unions, attributes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from diffmvae.data.celebamask import ATTRIBUTES, PARTS

CELEBA_40 = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair "
    "Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache "
    "Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair "
    "Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def make_cub(root: Path, classes: int = 3, per_class: int = 4, captions: int = 10, size: int = 40, seed: int = 0) -> dict:
    """A CUB folder: ``classes * per_class`` images of ``size x size`` whose bounding box (a quarter of the image,
    at a known place) is filled with a colour per class and the rest black; every other image is a test image.
    Captions say ``"a bird of class C caption K"``. Returns ``{id: (name, class, is_train, box)}``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "text_c10").mkdir()
    rows: dict[int, tuple] = {}
    i = 0
    for c in range(1, classes + 1):
        folder = f"{c:03d}.Bird_{c}"
        (root / "images" / folder).mkdir()
        (root / "text_c10" / folder).mkdir()
        for k in range(per_class):
            i += 1
            name = f"{folder}/Bird_{c}_{k:04d}_{i}.jpg"
            x, y = int(rng.integers(0, size // 2)), int(rng.integers(0, size // 2))
            box = (x, y, size // 2, size // 2)
            a = np.zeros((size, size, 3), dtype=np.uint8)
            a[y : y + size // 2, x : x + size // 2] = (40 * c % 256, 200, 255 - 60 * c % 256)
            Image.fromarray(a).save(root / "images" / name, quality=100)
            (root / "text_c10" / name).with_suffix(".txt").write_text("".join(f"a bird of class {c} caption {j}\n" for j in range(captions)))
            rows[i] = (name, c, i % 2 == 1, box)
    (root / "images.txt").write_text("".join(f"{i} {r[0]}\n" for i, r in rows.items()))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {r[1]}\n" for i, r in rows.items()))
    (root / "train_test_split.txt").write_text("".join(f"{i} {int(r[2])}\n" for i, r in rows.items()))
    (root / "bounding_boxes.txt").write_text("".join(f"{i} {r[3][0]}.0 {r[3][1]}.0 {r[3][2]}.0 {r[3][3]}.0\n" for i, r in rows.items()))
    return rows


def make_celebamask(root: Path, n: int = 12, size: int = 32, mask_size: int = 16, seed: int = 0) -> dict:
    """A CelebAMask-HQ folder with ``n`` faces: image ``i`` is a flat colour; its skin mask covers everything, the
    ``hair`` mask the top rows and the ``l_eye`` mask one pixel block (absent for odd ``i``); the mapping file puts a
    third of the images in each of train / val / test. Attributes are random 1 / -1. Returns
    ``{"attributes": [n, 40] 0/1, "orig": [n] CelebA indices}``."""
    rng = np.random.default_rng(seed)
    for folder in ("CelebA-HQ-img", "CelebAMask-HQ-mask-anno/0"):
        (root / folder).mkdir(parents=True)
    attrs = rng.integers(0, 2, size=(n, 40))
    bounds = (0, 162771, 182638)
    orig = np.array([bounds[i % 3] + i for i in range(n)])
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), (10 * i) % 256, dtype=np.uint8)).save(root / "CelebA-HQ-img" / f"{i}.jpg", quality=100)
        masks = {"skin": np.full((mask_size, mask_size), 255), "hair": np.zeros((mask_size, mask_size))}
        masks["hair"][: mask_size // 4] = 255
        if i % 2 == 0:
            masks["l_eye"] = np.zeros((mask_size, mask_size))
            masks["l_eye"][mask_size // 2 :, : mask_size // 2] = 255
        for part, m in masks.items():
            Image.fromarray(np.repeat(m.astype(np.uint8)[..., None], 3, axis=2)).save(root / "CelebAMask-HQ-mask-anno" / "0" / f"{i:05d}_{part}.png")
    lines = [str(n), " ".join(CELEBA_40)] + [f"{i}.jpg  " + " ".join("1" if a else "-1" for a in attrs[i]) for i in range(n)]
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join(lines) + "\n")
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("idx         orig_idx    orig_file\n"
                                                          + "".join(f"{i} {orig[i]} {orig[i] + 1:06d}.jpg\n" for i in range(n)))
    return {"attributes": attrs, "orig": orig, "columns": [CELEBA_40.index(a) for a in ATTRIBUTES], "parts": PARTS}
