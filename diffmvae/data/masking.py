"""Masked copies of image modalities (MT-Diffusion's masked-image training, Chen et al. 2024 §4.1): each example gains
``<m>_masked``, the image with a random set of square patches replaced by mid-grey, and ``<m>_mask`` (``[1, H, W]``,
1 where masked), deterministic by seed and index. The share of masked patches is drawn per example from
``ratio = (low, high)`` (the paper draws the number of patches uniformly, from none to many)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

FILL = 0.5  # mid-grey: 0 in the [-1, 1] diffusion space, so a masked pixel adds nothing to an identity encoding


def patch_mask(size: int, patch: int, ratio: float, rng: np.random.Generator) -> Tensor:
    """``[1, size, size]`` float, 1 on ``round(ratio * n)`` of the ``n`` patches of ``patch x patch`` pixels (the
    last row and column of patches may be smaller)."""
    cells = -(-size // patch)
    chosen = rng.permutation(cells * cells)[: round(ratio * cells * cells)]
    grid = np.zeros(cells * cells, dtype=np.float32)
    grid[chosen] = 1.0
    full = np.kron(grid.reshape(cells, cells), np.ones((patch, patch), dtype=np.float32))[:size, :size]
    return torch.from_numpy(np.ascontiguousarray(full))[None]


def ratio_range(patch: int, ratio: float | Sequence[float]) -> tuple[float, float]:
    """``ratio`` as ``(low, high)``, checked."""
    low, high = (ratio, ratio) if isinstance(ratio, (int, float)) else tuple(ratio)
    if patch < 1 or not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"masking needs mask_patch >= 1 and 0 <= mask_ratio <= 1 (a number or [low, high]), got {patch}, {ratio}")
    return float(low), float(high)


class MaskedCopies(Dataset):
    """Wraps a dataset: for every name in ``names`` adds ``<name>_masked`` and ``<name>_mask``."""

    def __init__(self, base: Dataset, names: Sequence[str], patch: int = 7, ratio: float | Sequence[float] = 0.5, seed: int = 0) -> None:
        self.base, self.names, self.patch, self.ratio, self.seed = base, tuple(names), patch, ratio_range(patch, ratio), seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        rng = np.random.default_rng([self.seed, 7, i])
        for m in self.names:
            mask = patch_mask(item[m].shape[-1], self.patch, rng.uniform(*self.ratio), rng)
            item[f"{m}_mask"] = mask
            item[f"{m}_masked"] = item[m] * (1 - mask) + FILL * mask
        return item
