"""Datasets and DataModules. ``PolyDigits`` is embedded (no download); the others read local paths."""

from diffmvae.data.celebamask import CelebAMaskHQ
from diffmvae.data.cub import CUB
from diffmvae.data.datamodule import (
    CelebAMaskHQDataModule,
    CUBDataModule,
    MultimodalDataModule,
    PolyDigitsDataModule,
    PolyMNISTDataModule,
)
from diffmvae.data.polydigits import PolyDigits
from diffmvae.data.polymnist import PolyMNIST
from diffmvae.data.spec import ModalitySpec

__all__ = ["CUB", "CUBDataModule", "CelebAMaskHQ", "CelebAMaskHQDataModule", "ModalitySpec", "MultimodalDataModule", "PolyDigits", "PolyDigitsDataModule", "PolyMNIST", "PolyMNISTDataModule"]
