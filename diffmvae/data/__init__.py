"""Datasets and DataModules. ``PolyDigits`` is embedded (no download); the others read local paths."""

from diffmvae.data.datamodule import PolyDigitsDataModule
from diffmvae.data.polydigits import PolyDigits

__all__ = ["PolyDigits", "PolyDigitsDataModule"]
