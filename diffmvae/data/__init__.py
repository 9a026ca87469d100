"""Datasets and DataModules. ``PolyDigits`` is embedded (no download); the others read local paths."""

from diffmvae.data.datamodule import MultimodalDataModule, PolyDigitsDataModule, PolyMNISTDataModule
from diffmvae.data.polydigits import PolyDigits
from diffmvae.data.polymnist import PolyMNIST

__all__ = ["MultimodalDataModule", "PolyDigits", "PolyDigitsDataModule", "PolyMNIST", "PolyMNISTDataModule"]
