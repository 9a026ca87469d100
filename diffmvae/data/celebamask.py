"""CelebAMask-HQ (Lee et al. 2020) from a local folder in the official release layout::

    ROOT/CelebA-HQ-img/<i>.jpg                                   (1024x1024)
    ROOT/CelebAMask-HQ-mask-anno/<i // 2000>/<iiiii>_<part>.png  (512x512, one file per face part present)
    ROOT/CelebAMask-HQ-attribute-anno.txt                        (count, the 40 names, then "<i>.jpg  1 -1 ...")
    ROOT/CelebA-HQ-to-CelebA-mapping.txt                         ("idx orig_idx orig_file": the split)

Three modalities as in Wesego & Rooshenas 2024 §6.4: the image (``image_size``, 64 by default), one binary mask made of every face-part
mask except skin, and 18 of the 40 attributes. The attribute list and the part list are those of the authors' own code
(Wesego & Rooshenas, SBM-AE, github.com/rooshenasgroup/sbmae: ``configs.py`` ``new_id_to_attr`` / the attribute
indices ``attr_visible`` of ``train_cel_upd_mopoe_an.py``, and ``create_celeba_mask.py``'s ``label_list``), which seed
003 follows ("similar to the setup of [43]").

Splits are those of the release's own ``face_parsing/Data_preprocessing/g_partition.py`` (CelebA's partition through
the mapping file): an image whose ``orig_idx`` is below 162771 is ``train``, below 182638 ``val``, the rest ``test``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from diffmvae.data.datamodule import MultimodalDataModule
from diffmvae.data.files import need_dir, need_file, open_image, read_table, to_array
from diffmvae.data.spec import ModalitySpec, image_spec
from diffmvae.io import DiffMVAEError

Split = Literal["train", "val", "test"]

ATTRIBUTES = (
    "Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Bushy_Eyebrows", "Eyeglasses", "Gray_Hair", "Heavy_Makeup", "Male",
    "Mouth_Slightly_Open", "Mustache", "Pale_Skin", "Receding_Hairline", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Hat",
)
# Every annotated face part but skin.
PARTS = ("nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r",
         "neck_l", "neck", "cloth")
# The release's partition of ``orig_idx`` (g_partition.py): train below the first bound, val below the second.
CELEBA_SPLIT = (162771, 182638)
IMAGES, MASKS = "CelebA-HQ-img", "CelebAMask-HQ-mask-anno"
ATTRIBUTE_FILE, MAPPING_FILE = "CelebAMask-HQ-attribute-anno.txt", "CelebA-HQ-to-CelebA-mapping.txt"


def read_attributes(path: Path, names: tuple[str, ...] = ATTRIBUTES) -> dict[int, np.ndarray]:
    """``{image index: 0/1 float32 [len(names)]}`` from the release's attribute file (values 1 / -1)."""
    need_file(path, "CelebAMask-HQ attribute")
    lines = path.read_text().splitlines()
    if len(lines) < 3:
        raise DiffMVAEError(f"CelebAMask-HQ attribute file {path} needs a count line, a header of names and rows")
    header = lines[1].split()
    missing = [n for n in names if n not in header]
    if missing:
        raise DiffMVAEError(f"CelebAMask-HQ attribute file {path} has no attribute {missing[0]!r} in its header")
    columns = [header.index(n) for n in names]

    def parse(fields: list[str]) -> tuple[int, np.ndarray]:
        if not fields[0].endswith(".jpg") or not fields[0][:-4].isdigit():
            raise ValueError(f"expected an image name like 0.jpg, got {fields[0]!r}")
        values = fields[1:]
        if any(v not in ("1", "-1") for v in values):
            raise ValueError(f"attribute values must be 1 or -1, got {next(v for v in values if v not in ('1', '-1'))!r}")
        return int(fields[0][:-4]), np.array([values[c] == "1" for c in columns], dtype=np.float32)

    return dict(read_table(path, len(header) + 1, parse, what="CelebAMask-HQ attribute", skip=2))


def read_split(path: Path, split: Split) -> list[int]:
    """The CelebA-HQ indices of ``split`` (CelebA's partition of their original indices)."""
    def parse(fields: list[str]) -> tuple[int, int]:
        return int(fields[0]), int(fields[1])

    rows = read_table(path, 3, parse, what="CelebAMask-HQ mapping", skip=1)
    low, high = CELEBA_SPLIT
    keep = {"train": lambda o: o < low, "val": lambda o: low <= o < high, "test": lambda o: o >= high}[split]
    return sorted(i for i, orig in rows if keep(orig))


def mask_union(folder: Path, index: int, size: int, parts: tuple[str, ...] = PARTS) -> Tensor:
    """The binary ``[1, size, size]`` mask: the union of the part masks of image ``index`` (files that are absent are
    parts the face does not show), resized with area averaging and thresholded at one half."""
    union: np.ndarray | None = None
    sub = folder / str(index // 2000)
    for part in parts:
        path = sub / f"{index:05d}_{part}.png"
        if not path.is_file():
            continue
        a = np.asarray(open_image(path, "CelebAMask-HQ mask", mode="L")) > 127
        union = a if union is None else union | a
    if union is None:  # no part at all (never in the release): an empty mask of the annotation's size
        union = np.zeros((512, 512), dtype=bool)
    small = Image.fromarray(union.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX)
    return torch.from_numpy((to_array(small) >= 0.5).astype(np.float32))


class CelebAMaskHQ(Dataset):
    """Items ``{"image": [3, S, S] in [0, 1], "mask": [1, S, S] 0/1, "attributes": [18] 0/1}``.

    Args:
        root: the release folder (see the module docstring).
        split: ``train``, ``val`` or ``test`` (CelebA's partition).
        image_size: side ``S`` of image and mask.
        attributes: the attribute names (default: the paper's 18).
        limit: use only the first ``limit`` examples of the split (quick runs).
    """

    def __init__(self, root: str | Path, split: Split = "train", image_size: int = 64, attributes: tuple[str, ...] = ATTRIBUTES,
                 limit: int | None = None) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; choose train, val or test")
        self.root, self.image_size = Path(root), image_size
        need_dir(self.root, "CelebAMask-HQ")
        self.images, self.masks = need_dir(self.root / IMAGES, "CelebAMask-HQ image"), need_dir(self.root / MASKS, "CelebAMask-HQ mask")
        table = read_attributes(self.root / ATTRIBUTE_FILE, tuple(attributes))
        indices = read_split(self.root / MAPPING_FILE, split)
        missing = [i for i in indices if i not in table]
        if missing:
            raise DiffMVAEError(f"CelebAMask-HQ attribute file {self.root / ATTRIBUTE_FILE} has no row for {missing[0]}.jpg")
        self.indices = indices[:limit] if limit is not None else indices
        if not self.indices:
            raise DiffMVAEError(f"CelebAMask-HQ split {split!r} of {self.root} is empty")
        self.attributes = torch.from_numpy(np.stack([table[i] for i in self.indices]))
        self.attribute_names = tuple(attributes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        im = open_image(self.images / f"{index}.jpg", "CelebAMask-HQ image")
        image = torch.from_numpy(to_array(im.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)).clip(0.0, 1.0))
        return {"image": image, "mask": mask_union(self.masks, index, self.image_size), "attributes": self.attributes[i]}


class CelebAMaskHQDataModule(MultimodalDataModule):
    """CelebAMask-HQ read from ``root`` (layout: :mod:`diffmvae.data.celebamask`): modalities ``image``
    (``[3, S, S]``), ``mask`` (``[1, S, S]`` 0/1: every face part but skin) and ``attributes`` (``[18]`` 0/1, the
    paper's list); the attributes are also what coherence is judged on (``label_key``).

    Args:
        root: the release folder.
        image_size: side ``S`` of image and mask (64 by default).
        attributes: attribute names of the release's header (default: the 18 of Wesego & Rooshenas 2024 / SBM-AE).
        limit: only the first ``limit`` examples of each split (quick runs).
    """

    label_key = "attributes"

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        attributes: Sequence[str] = ATTRIBUTES,
        limit: int | None = None,
        batch_size: int = 64,
        seed: int = 0,
        missing_rate: float = 0.0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, missing_rate, seed)
        self.save_hyperparameters()
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.root, self.image_size, self.attributes, self.limit = root, image_size, tuple(attributes), limit
        self.specs = {
            "image": image_spec(3, image_size),
            "mask": ModalitySpec("image", (1, image_size, image_size), judge="match"),
            "attributes": ModalitySpec("attributes", (len(self.attributes),), judge="value"),
        }

    def make_dataset(self, split: Split) -> Dataset:
        return CelebAMaskHQ(self.root, split, self.image_size, self.attributes, self.limit)
