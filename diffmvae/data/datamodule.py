"""LightningDataModules. Each declares ``specs`` (its modalities' :class:`~diffmvae.data.spec.ModalitySpec` s, in
order) and ``dataset(split)`` for the sampling and evaluation commands. Every data setting is a constructor
argument (recorded by ``save_hyperparameters``), so it lands in the run's config and in cache keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffmvae.data.captions import Captioned, captions_for, parse_digit
from diffmvae.data.masking import MaskedCopies, MaskStyle, check_style, ratio_range
from diffmvae.data.order import EpochSampler
from diffmvae.data.polydigits import BACKGROUND_SCALE, TEXTURE_CONTRAST, TEXTURE_MEANS, VERSION, PolyDigits, Split
from diffmvae.data.polymnist import PolyMNIST
from diffmvae.data.spec import ModalitySpec, image_spec
from diffmvae.data.text import TextModality
from diffmvae.io import DiffMVAEError

# Settings of how data is loaded, not of what the data is: left out of cache keys.
LOADER_SETTINGS = ("batch_size", "num_workers", "missing_rate")


class MissingModalities(Dataset):
    """Wraps a complete dataset and drops each modality of each example with probability ``rate``
    (deterministic by ``seed`` and index; at least one modality is always kept). Items gain ``present``,
    a bool ``[M]`` tensor; dropped modalities hold their spec's null value."""

    def __init__(self, base: Dataset, specs: Mapping[str, ModalitySpec], rate: float, seed: int = 0) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"missing rate must be in [0, 1), got {rate}")
        self.base, self.specs, self.rate, self.seed = base, dict(specs), rate, seed

    def __len__(self) -> int:
        return len(self.base)

    @property
    def views_per_epoch(self) -> bool:
        return getattr(self.base, "views_per_epoch", False)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        rng = np.random.default_rng([self.seed, i % len(self.base)])  # the same example misses the same modalities every epoch
        present = rng.random(len(self.specs)) >= self.rate
        if not present.any():
            present[rng.integers(len(self.specs))] = True
        for (m, spec), keep in zip(self.specs.items(), present):
            if not keep:
                item[m] = spec.null()
        item["present"] = torch.from_numpy(present)
        return item


class DropKeys(Dataset):
    """Wraps a dataset and leaves ``names`` out of every item."""

    def __init__(self, base: Dataset, names: Sequence[str]) -> None:
        self.base, self.names = base, frozenset(names)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {k: v for k, v in self.base[i].items() if k not in self.names}


def check_fraction(name: str, value: float) -> float:
    """``value`` when it is in [0, 1), else a one-line error naming ``name``."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


class MultimodalDataModule(L.LightningDataModule):
    """Shared loader plumbing. Subclasses call ``save_hyperparameters()``, set ``specs``, and implement
    :meth:`make_dataset`; :meth:`dataset` caches and adds missing modalities (``missing_rate``)."""

    specs: dict[str, ModalitySpec]
    label_key: str = "label"

    def __init__(self, batch_size: int, num_workers: int = 0, missing_rate: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers, self.missing_rate, self.seed = batch_size, num_workers, check_fraction("missing_rate", missing_rate), seed
        self._sets: dict[str, Dataset] = {}
        self.text: TextModality | None = None  # a data set with captions sets its text modality

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def cache_key(self) -> dict[str, Any]:
        """The settings that define the data (every constructor argument but the loader settings), with the class
        name and recipe version: what caches of things trained on the data (judge classifiers) are keyed on."""
        settings = {k: v for k, v in self.hparams.items() if k not in LOADER_SETTINGS}
        return {"class": type(self).__name__, "version": getattr(self, "version", None), "settings": settings}

    def make_dataset(self, split: Split) -> Dataset:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ text modalities (``self.text``, when set)
    def _text(self, name: str) -> TextModality:
        if self.text is None or not self.specs.get(name) or not self.specs[name].is_text:
            raise DiffMVAEError(f"{type(self).__name__} has no text modality {name!r}")
        return self.text

    def decode_text(self, name: str, ids: Any) -> list[str]:
        """The strings of a text modality's token ids."""
        return self._text(name).decode(ids)

    def encode_text(self, name: str, texts: Sequence[str]) -> dict[str, Tensor]:
        """A text modality's tensors for ``texts`` (what its examples hold)."""
        return self._text(name).encode(texts)

    def portable_files(self, folder: Path) -> dict[str, str]:
        """Write under ``folder`` what this data needs beyond its config to rebuild its modalities elsewhere (a text
        modality's tokenizer, which is otherwise trained from the data or read from the author's disk); returns the
        init arguments that read those files, as paths relative to ``folder``."""
        return self.text.save(folder, "tokenizer") if self.text is not None else {}

    def dataset(self, split: Split) -> Dataset:
        """The (cached) dataset of ``split``; only ``train`` gets missing modalities."""
        if split not in self._sets:
            ds = self.make_dataset(split)
            if split == "train" and self.missing_rate > 0:
                ds = MissingModalities(ds, self.specs, self.missing_rate, self.seed)
            self._sets[split] = ds
        return self._sets[split]

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage or "fit", ("train", "val", "test")):
            self.dataset(split)

    def _loader(self, split: Split, shuffle: bool) -> DataLoader:
        """Training batches come in an order fixed by the run's seed and the epoch (:class:`EpochSampler`: the seed is
        ``torch.initial_seed()`` when the loader is made, i.e. ``seed_everything``'s), so a resumed run sees the same
        batches as an uninterrupted one."""
        data = self.dataset(split)
        views = getattr(data, "views_per_epoch", False)  # a data set that shows each example differently per epoch (CUB's captions)
        trainer = getattr(self, "trainer", None)
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(len(data), torch.initial_seed() % 2**31, offset_epochs=views, num_replicas=replicas, rank=rank) if shuffle else None
        return DataLoader(
            data,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=shuffle,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class PolyDigitsDataModule(MultimodalDataModule):
    """PolyDigits with ``M`` modalities.

    Args:
        num_modalities: ``M`` in 1..10.
        batch_size: examples per step (per process under DDP).
        seed: dataset seed (pairing and crops), independent of the training seed.
        train_length: training examples (default: one per handwriting instance, 1257).
        texture_contrast: contrast of the background textures (:func:`diffmvae.data.polydigits.background`;
            ``1.0`` is the harder variant).
        texture_means: the two brightness levels a texture's mean is moved to (the nearer one).
        background_scale: the photo downscale before a texture is cropped (larger: smoother crops).
        label_modality: the digit label is also a modality named ``label`` (a categorical one; its own value is the
            judge of coherence), for models that generate labels (MT-Diffusion's image-label task).
        masked: image modalities that get a masked copy ``<m>_masked`` (and the mask ``<m>_mask``, Chen et al. 2024
            §4.1): ``mask_style: grid`` (the default) greys out a ``mask_ratio`` share (a number, or ``[low, high]``
            drawn per example) of the ``mask_patch``-pixel cells of a grid; ``paper`` blacks out ``Uniform{0, ...,
            mask_patches}`` ``mask_patch``-pixel squares at random positions, as the paper does (its 16 px at 64 px
            are 7 px at 28 px).
        missing_rate: probability of dropping each modality of a training example (incomplete data).
        captions: add a ``text`` modality, one caption per example naming its digit and the colour of ``m1``'s
            background (:mod:`diffmvae.data.captions`).
        tokenizer: a local tokenizer directory for the captions; default: a word-level tokenizer trained in memory
            on the training captions (``vocab_size`` at most).
        encoder_tokenizer: a second local tokenizer directory for the text encoder (Optimus: BERT's vocabulary for
            the encoder, GPT-2's for the decoder); default: the encoder reads ``tokenizer``'s ids.
        max_length: caption tokens, ``[BOS]`` and ``[EOS]`` included.
        keep: train on these image modalities only (e.g. ``[m1, m2]``, names as for ``M = num_modalities``): each
            keeps its own texture and the same examples, so models trained on different subsets can be united at
            sampling time (Unite-and-Conquer across models). Default: all ``M``.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        num_modalities: int = 5,
        batch_size: int = 128,
        seed: int = 0,
        train_length: int | None = None,
        texture_contrast: float = TEXTURE_CONTRAST,
        texture_means: tuple[float, float] = TEXTURE_MEANS,
        background_scale: float = BACKGROUND_SCALE,
        label_modality: bool = False,
        masked: Sequence[str] = (),
        mask_patch: int = 7,
        mask_ratio: float | tuple[float, float] = 0.5,
        mask_style: MaskStyle = "grid",
        mask_patches: int = 10,
        missing_rate: float = 0.0,
        keep: Sequence[str] = (),
        captions: bool = False,
        tokenizer: str | None = None,
        encoder_tokenizer: str | None = None,
        vocab_size: int = 1000,
        max_length: int = 20,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, missing_rate, seed)
        self.save_hyperparameters()
        self.num_modalities, self.train_length = num_modalities, train_length
        self.recipe = {"texture_contrast": texture_contrast, "texture_means": tuple(texture_means), "background_scale": background_scale}
        self.specs = {f"m{k}": image_spec(3, 28) for k in range(num_modalities)}
        dropped = [m for m in keep if m not in self.specs]
        if dropped or len(set(keep)) != len(keep):
            raise ValueError(f"keep must name distinct image modalities of {', '.join(self.specs)}; got {list(keep)}")
        self.dropped = tuple(m for m in self.specs if keep and m not in keep)
        self.specs = {m: spec for m, spec in self.specs.items() if m not in self.dropped}
        unknown = [m for m in masked if m not in self.specs]
        if unknown:
            raise ValueError(f"masked names {unknown[0]!r}, which is not an image modality ({', '.join(self.specs)})")
        ratio_range(mask_patch, mask_ratio)
        check_style(mask_style, mask_patches)
        self.masked, self.mask_patch, self.mask_ratio = tuple(masked), mask_patch, mask_ratio
        self.mask_style, self.mask_patches = mask_style, mask_patches
        self.specs.update({f"{m}_masked": image_spec(3, 28) for m in self.masked})
        if label_modality:
            self.specs["label"] = ModalitySpec("label", (), num_classes=10, judge="value")
        self.captions = captions
        self.text = TextModality(max_length, lambda: captions_for(self.polydigits("train"), self.seed), tokenizer, encoder_tokenizer,
                                 vocab_size) if captions else None
        if self.text is not None:
            self.specs["text"] = self.text.spec()

    def cache_key(self) -> dict[str, Any]:
        """As for every data module; ``keep`` only when it drops modalities and the caption settings only with
        captions, so the key (and the judge classifiers cached under it) of the plain data set stayed what it was
        before those options existed."""
        key = super().cache_key()
        if not self.dropped:
            key["settings"].pop("keep", None)
        if not self.captions:
            for name in ("captions", "tokenizer", "encoder_tokenizer", "vocab_size", "max_length"):
                key["settings"].pop(name, None)
        return key

    @property
    def version(self) -> int:
        """The PolyDigits recipe version: caches of things trained on the data (classifiers) are keyed on it."""
        return VERSION

    def polydigits(self, split: Split) -> PolyDigits:
        return PolyDigits(split, self.num_modalities, self.seed, self.train_length if split == "train" else None, **self.recipe)

    @property
    def tokenizer(self) -> Any:
        """The captions' :class:`~diffmvae.text.TextTokenizer` (loaded from ``tokenizer``, or trained on the training
        captions)."""
        if self.text is None:
            raise ValueError("this PolyDigits data set has no captions (captions: false)")
        return self.text.tokenizer

    @staticmethod
    def parse_label(text: str) -> int:
        """The digit a caption names (-1 for none): the rule-based second judge of generated captions."""

        return parse_digit(text)

    def make_dataset(self, split: Split) -> Dataset:
        ds = self.polydigits(split)
        if self.text is not None:
            texts = captions_for(ds, self.seed)
            ds = Captioned(ds, texts, self.text.encode(texts))
        ds = DropKeys(ds, self.dropped) if self.dropped else ds
        return MaskedCopies(ds, self.masked, self.mask_patch, self.mask_ratio, self.seed, self.mask_style, self.mask_patches) if self.masked else ds


class PolyMNISTDataModule(MultimodalDataModule):
    """PolyMNIST read from ``root`` in the published layout (see :mod:`diffmvae.data.polymnist`).

    Args:
        root: folder holding ``train/m*/`` and ``test/m*/``.
        num_modalities: ``M`` (5 in the published data set, 10 in the extended one).
        batch_size, num_workers: loader settings.
        val_fraction, seed: the seeded part of train held out for validation.
        missing_rate: probability of dropping each modality of a training example.
        keep: train on these modalities only (names as for ``num_modalities``), as PolyDigits' ``keep``: the same
            examples, so models trained on subsets compare (Wesego & Rooshenas 2024 Fig. 7) and unite.
    """

    def __init__(
        self,
        root: str,
        num_modalities: int = 5,
        batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        missing_rate: float = 0.0,
        keep: Sequence[str] = (),
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, missing_rate, seed)
        self.save_hyperparameters()
        self.root, self.num_modalities, self.val_fraction = root, num_modalities, check_fraction("val_fraction", val_fraction)
        self.specs = {f"m{k}": image_spec(3, 28) for k in range(num_modalities)}
        if any(m not in self.specs for m in keep) or len(set(keep)) != len(keep):
            raise ValueError(f"keep must name distinct modalities of {', '.join(self.specs)}; got {list(keep)}")
        self.specs = {m: spec for m, spec in self.specs.items() if not keep or m in keep}

    def make_dataset(self, split: Split) -> Dataset:
        return PolyMNIST(self.root, split, self.num_modalities, self.val_fraction, self.seed, modalities=tuple(self.specs))
