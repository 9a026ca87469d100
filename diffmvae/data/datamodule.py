"""LightningDataModules. Each exposes ``modalities`` and ``dataset(split)`` for the sampling/evaluation CLIs."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from diffmvae.data.polydigits import VERSION, PolyDigits, Split
from diffmvae.data.polymnist import PolyMNIST


class MissingModalities(Dataset):
    """Wraps a complete dataset and drops each modality of each example with probability ``rate``
    (deterministic by ``seed`` and index; at least one modality is always kept). Items gain ``present``,
    a bool ``[M]`` tensor; dropped modalities are zero-filled."""

    def __init__(self, base: Dataset, modalities: tuple[str, ...], rate: float, seed: int = 0) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"missing rate must be in [0, 1), got {rate}")
        self.base, self.modalities, self.rate, self.seed = base, modalities, rate, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        rng = np.random.default_rng([self.seed, i])
        present = rng.random(len(self.modalities)) >= self.rate
        if not present.any():
            present[rng.integers(len(self.modalities))] = True
        for m, keep in zip(self.modalities, present):
            if not keep:
                item[m] = torch.zeros_like(item[m])
        item["present"] = torch.from_numpy(present)
        return item


class MultimodalDataModule(L.LightningDataModule):
    """Shared loader plumbing: subclasses pass ``batch_size`` (checked here), set ``modalities``,
    ``num_workers``, ``seed`` and ``missing_rate`` and implement :meth:`make_dataset`; :meth:`dataset` caches and adds missing modalities."""

    modalities: tuple[str, ...]
    batch_size: int
    num_workers: int = 0
    seed: int = 0
    missing_rate: float = 0.0

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._sets: dict[str, Dataset] = {}

    def make_dataset(self, split: Split) -> Dataset:  # pragma: no cover - abstract
        raise NotImplementedError

    def dataset(self, split: Split) -> Dataset:
        """The (cached) dataset of ``split``; only ``train`` gets missing modalities."""
        if split not in self._sets:
            ds = self.make_dataset(split)
            if split == "train" and self.missing_rate > 0:
                ds = MissingModalities(ds, self.modalities, self.missing_rate, self.seed)
            self._sets[split] = ds
        return self._sets[split]

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage or "fit", ("train", "val", "test")):
            self.dataset(split)

    def _loader(self, split: Split, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
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
        num_modalities: ``M`` in 2..10.
        batch_size: examples per step (per process under DDP).
        seed: dataset seed (pairing and crops), independent of the training seed.
        train_length: training examples (default: one per handwriting instance, 1257).
        missing_rate: probability of dropping each modality of a training example (incomplete data).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        num_modalities: int = 5,
        batch_size: int = 128,
        seed: int = 0,
        train_length: int | None = None,
        missing_rate: float = 0.0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size)
        self.num_modalities, self.seed = num_modalities, seed
        self.train_length, self.missing_rate, self.num_workers = train_length, missing_rate, num_workers
        self.modalities = tuple(f"m{k}" for k in range(num_modalities))

    @property
    def version(self) -> int:
        """The PolyDigits recipe version: caches of things trained on the data (classifiers) are keyed on it."""
        return VERSION

    def make_dataset(self, split: Split) -> Dataset:
        return PolyDigits(split, self.num_modalities, self.seed, self.train_length if split == "train" else None)


class PolyMNISTDataModule(MultimodalDataModule):
    """PolyMNIST read from ``root`` in the published layout (see :mod:`diffmvae.data.polymnist`).

    Args:
        root: folder holding ``train/m*/`` and ``test/m*/``.
        num_modalities: ``M`` (5 in the published data set, 10 in the extended one).
        batch_size, num_workers: loader settings.
        val_fraction, seed: the seeded part of train held out for validation.
        missing_rate: probability of dropping each modality of a training example.
    """

    def __init__(
        self,
        root: str,
        num_modalities: int = 5,
        batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        missing_rate: float = 0.0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root, self.num_modalities, self.val_fraction = root, num_modalities, val_fraction
        self.seed, self.missing_rate, self.num_workers = seed, missing_rate, num_workers
        self.modalities = tuple(f"m{k}" for k in range(num_modalities))

    def make_dataset(self, split: Split) -> Dataset:
        return PolyMNIST(self.root, split, self.num_modalities, self.val_fraction, self.seed)
