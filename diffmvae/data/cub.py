"""CUB-200-2011 image–captions from a local folder in the layout MMVAE, MoPoE and multivae read: the CUB release
with the ten captions per image of Reed et al. (2016)::

    ROOT/images.txt               "<id> <class folder>/<name>.jpg"
    ROOT/train_test_split.txt     "<id> <1: train, 0: test>"
    ROOT/image_class_labels.txt   "<id> <class 1..200>"
    ROOT/bounding_boxes.txt       "<id> <x> <y> <width> <height>"   (pixels of the original image)
    ROOT/images/<class folder>/<name>.jpg
    ROOT/text/<class folder>/<name>.txt   (one caption per line, ``captions_per_image`` of them)

Each image is cropped to its bounding box and resized to ``image_size`` (64 in Wesego & Rooshenas 2024). A training example shows one
of its captions, drawn afresh every epoch (by seed, example and epoch: see :class:`CUB`); validation and test show
one fixed caption per example. ``val`` is a seeded part of the official training split. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from diffmvae.data.datamodule import MultimodalDataModule, check_fraction
from diffmvae.data.files import need_dir, need_file, open_image, read_table, to_array, val_split
from diffmvae.data.spec import image_spec
from diffmvae.data.text import TextModality
from diffmvae.io import DiffMVAEError

Split = Literal["train", "val", "test"]


def read_captions(path: Path, count: int) -> list[str]:
    """The first ``count`` non-empty lines of a caption file; fewer is an error naming the file."""
    need_file(path, "CUB caption")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError as e:
        raise DiffMVAEError(f"CUB caption file {path} could not be read ({e})") from None
    if len(lines) < count:
        raise DiffMVAEError(f"CUB caption file {path} has {len(lines)} captions, expected {count} (captions_per_image)")
    return lines[:count]


def crop_box(size: tuple[int, int], box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """The bounding box ``(x, y, w, h)`` as PIL's ``(left, upper, right, lower)``, clipped to the image."""
    width, height = size
    x, y, w, h = box
    left, upper = max(0, int(round(x))), max(0, int(round(y)))
    right, lower = min(width, int(round(x + w))), min(height, int(round(y + h)))
    if right <= left or lower <= upper:
        raise ValueError(f"bounding box {box} lies outside the {width}x{height} image")
    return left, upper, right, lower


class CUB(Dataset):
    """Items ``{"image": [3, S, S] in [0, 1], "caption": index into captions[i], "label": class 0..199}``; the captions
    themselves are in ``captions`` (``[N][captions_per_image]`` strings) for the tokenizer.

    Index ``i`` in ``0..N-1`` is example ``i`` with its fixed caption (validation, test); an index ``i + e * N`` (what
    :class:`~diffmvae.data.order.EpochSampler` yields in epoch ``e`` for data sets with ``views_per_epoch``) is example
    ``i`` with the caption drawn for epoch ``e``.
    """

    views_per_epoch = True

    def __init__(self, root: str | Path, split: Split = "train", image_size: int = 64, captions_per_image: int = 10, val_fraction: float = 0.1,
                 seed: int = 0, text_dir: str = "text_c10") -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; choose train, val or test")
        if captions_per_image < 1 or image_size < 4:
            raise ValueError(f"captions_per_image must be >= 1 and image_size >= 4, got {captions_per_image}, {image_size}")
        self.root, self.split, self.image_size, self.seed = Path(root), split, image_size, seed
        need_dir(self.root, "CUB")
        names = dict(read_table(self.root / "images.txt", 2, lambda f: (int(f[0]), f[1]), what="CUB"))
        is_train = dict(read_table(self.root / "train_test_split.txt", 2, lambda f: (int(f[0]), _flag(f[1])), what="CUB"))
        labels = dict(read_table(self.root / "image_class_labels.txt", 2, lambda f: (int(f[0]), int(f[1])), what="CUB"))
        boxes = dict(read_table(self.root / "bounding_boxes.txt", 5, lambda f: (int(f[0]), tuple(float(v) for v in f[1:])), what="CUB"))
        for what, table in (("train_test_split.txt", is_train), ("image_class_labels.txt", labels), ("bounding_boxes.txt", boxes)):
            missing = sorted(set(names) - set(table))
            if missing:
                raise DiffMVAEError(f"CUB file {self.root / what} has no row for image id {missing[0]} (listed in images.txt)")
        ids = sorted(i for i in names if is_train[i] == (split != "test"))
        ids = val_split(ids, split, val_fraction, seed)
        if not ids:
            raise DiffMVAEError(f"CUB split {split!r} of {self.root} is empty")
        need_dir(self.root / "images", "CUB image")
        need_dir(self.root / text_dir, "CUB caption")
        self.ids = ids
        self.files = [self.root / "images" / names[i] for i in ids]
        self.boxes = [boxes[i] for i in ids]
        self.labels = torch.tensor([labels[i] - 1 for i in ids], dtype=torch.long)
        if int(self.labels.min()) < 0:
            raise DiffMVAEError(f"CUB file {self.root / 'image_class_labels.txt'} has a class below 1")
        self.captions = [read_captions(self.root / text_dir / Path(names[i]).with_suffix(".txt"), captions_per_image) for i in ids]
        self.captions_per_image = captions_per_image

    def __len__(self) -> int:
        return len(self.ids)

    def caption_index(self, i: int) -> int:
        """Which caption index ``i`` shows (see the class docstring)."""
        n = len(self.ids)
        example, epoch = i % n, i // n
        stream = [self.seed, example, epoch] if self.split == "train" else [self.seed, example]
        return int(np.random.default_rng(stream).integers(self.captions_per_image))

    def image(self, example: int) -> Tensor:
        """Example ``example``'s image cropped to its bounding box and resized (antialiased) to ``image_size``."""
        im = open_image(self.files[example], "CUB image")
        try:
            im = im.crop(crop_box(im.size, self.boxes[example]))
        except ValueError as e:
            raise DiffMVAEError(f"CUB image {self.files[example]}: {e} (bounding_boxes.txt)") from None
        return torch.from_numpy(to_array(im.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)).clip(0.0, 1.0))

    def __getitem__(self, i: int) -> dict:
        example = i % len(self.ids)
        return {"image": self.image(example), "caption": self.caption_index(i), "label": int(self.labels[example])}


def _flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(f"is_training_image must be 0 or 1, got {value!r}")
    return value == "1"


class TokenizedCaptions(Dataset):
    """Wraps a data set whose items name one of their example's captions (``caption``: an index into
    ``base.captions[example]``): the item's ``text`` becomes that caption's token ids (all captions are tokenized once)."""

    def __init__(self, base: Dataset, encoded: dict[str, torch.Tensor], name: str = "text") -> None:
        self.base, self.encoded, self.name = base, encoded, name  # encoded: [N, captions per example, L] each
        self.views_per_epoch = getattr(base, "views_per_epoch", False)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        example, caption = i % len(self.base), item.pop("caption")
        item[self.name] = {k: v[example, caption] for k, v in self.encoded.items()}
        return item


class CUBDataModule(MultimodalDataModule):
    """CUB-200-2011 image–captions read from ``root`` (layout: :mod:`diffmvae.data.cub`): modalities ``image``
    (``[3, image_size, image_size]``, cropped to the bird's bounding box) and ``text`` (one of the image's captions,
    drawn afresh each epoch), and the class ``label`` (0..199) for probes and the judges of coherence.

    Args:
        root: the CUB folder (``images.txt``, ``images/``, ``text_c10/``, ...).
        image_size: 64 in Wesego & Rooshenas 2024.
        captions_per_image: captions each ``text_c10/<name>.txt`` must hold (10 in Reed et al.'s release).
        tokenizer: a local tokenizer folder (GPT-2's for the decoder, as Optimus); default: a word-level tokenizer
            trained in memory on the training captions (``vocab_size`` at most).
        encoder_tokenizer: a second local tokenizer folder for the text encoder (BERT's).
        max_length: caption tokens, ``[BOS]`` and ``[EOS]`` included.
        val_fraction, seed: the seeded part of the official training split held out for validation.
        text_dir: the caption folder under ``root``: ``text_c10`` in Reed et al.'s release of the captions (Reed et al.
            2016, "Learning Deep Representations of Fine-Grained Visual Descriptions"); set it when yours is named otherwise.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        captions_per_image: int = 10,
        tokenizer: str | None = None,
        encoder_tokenizer: str | None = None,
        vocab_size: int = 2000,
        max_length: int = 32,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        seed: int = 0,
        text_dir: str = "text_c10",
        missing_rate: float = 0.0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, missing_rate, seed)
        self.save_hyperparameters()
        self.root, self.image_size, self.captions_per_image, self.text_dir = root, image_size, captions_per_image, text_dir
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self._cub: dict[str, CUB] = {}  # the loaded splits (the tokenizer trains on the train split's captions)
        self.text = TextModality(max_length, lambda: [c for cs in self.raw_split("train").captions for c in cs], tokenizer, encoder_tokenizer,
                                 vocab_size)
        self.specs = {"image": image_spec(3, image_size), "text": self.text.spec()}

    def cub(self, split: Split) -> CUB:
        return CUB(self.root, split, self.image_size, self.captions_per_image, self.val_fraction, self.seed, self.text_dir)

    @property
    def tokenizer(self) -> Any:
        return self.text.tokenizer

    def raw_split(self, split: Split) -> CUB:
        if split not in self._cub:
            self._cub[split] = self.cub(split)
        return self._cub[split]

    def make_dataset(self, split: Split) -> Dataset:
        base = self.raw_split(split)
        flat = [c for cs in base.captions for c in cs]
        encoded = self.text.encode(flat)
        encoded = {k: v.view(len(base), self.captions_per_image, -1) for k, v in encoded.items()}
        return TokenizedCaptions(base, encoded)
