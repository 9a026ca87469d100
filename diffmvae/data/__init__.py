"""Datasets and DataModules. ``PolyDigits`` is embedded (no download); the others read local paths."""

from diffmvae.data.celebamask import CelebAMaskHQ, CelebAMaskHQDataModule
from diffmvae.data.cub import CUB, CUBDataModule
from diffmvae.data.datamodule import MultimodalDataModule, PolyDigitsDataModule, PolyMNISTDataModule
from diffmvae.data.polydigits import PolyDigits
from diffmvae.data.polymnist import PolyMNIST
from diffmvae.data.spec import ModalitySpec

__all__ = ["CUB", "CUBDataModule", "CelebAMaskHQ", "CelebAMaskHQDataModule", "ModalitySpec", "MultimodalDataModule", "PolyDigits", "PolyDigitsDataModule", "PolyMNIST", "PolyMNISTDataModule"]
