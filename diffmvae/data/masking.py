"""Masked copies of image modalities (MT-Diffusion's masked-image training, Chen et al. 2024 §4.1): each example gains
``<m>_masked``, the image with random square patches filled in, and ``<m>_mask`` (``[1, H, W]``, 1 where masked),
deterministic by seed and index. Two styles:

* ``paper`` (the paper's, App. E.2, scaled to the image): ``m ~ Uniform{0, ..., max_patches}`` patches, each at a
  uniformly random corner ``(x, y)`` in the image and cut at its border (so they may overlap), set to black (0). At
  64 px the paper's patches are 16 px; at 28 px that is 7 px.
* ``grid``: a share of the ``patch x patch`` cells of a grid, drawn per example from ``ratio = (low, high)``, set to
  mid-grey (0 in the [-1, 1] diffusion space, so a masked pixel adds nothing to an identity encoding)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

FILL = 0.5  # the grid style's mid-grey
PAPER_FILL = 0.0  # the paper's black
MaskStyle = Literal["grid", "paper"]


def patch_mask(size: int, patch: int, ratio: float, rng: np.random.Generator) -> Tensor:
    """``[1, size, size]`` float, 1 on ``round(ratio * n)`` of the ``n`` patches of ``patch x patch`` pixels (the
    last row and column of patches may be smaller)."""
    cells = -(-size // patch)
    chosen = rng.permutation(cells * cells)[: round(ratio * cells * cells)]
    grid = np.zeros(cells * cells, dtype=np.float32)
    grid[chosen] = 1.0
    full = np.kron(grid.reshape(cells, cells), np.ones((patch, patch), dtype=np.float32))[:size, :size]
    return torch.from_numpy(np.ascontiguousarray(full))[None]


def paper_mask(size: int, patch: int, count: int, rng: np.random.Generator) -> Tensor:
    """``[1, size, size]`` float, 1 on the union of ``count`` ``patch x patch`` squares whose top-left corners are
    uniform over the image (cut at its border)."""
    full = np.zeros((size, size), dtype=np.float32)
    for x, y in rng.integers(0, size, size=(count, 2)):
        full[y:y + patch, x:x + patch] = 1.0
    return torch.from_numpy(full)[None]


def ratio_range(patch: int, ratio: float | Sequence[float]) -> tuple[float, float]:
    """``ratio`` as ``(low, high)``, checked."""
    low, high = (ratio, ratio) if isinstance(ratio, (int, float)) else tuple(ratio)
    if patch < 1 or not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"masking needs mask_patch >= 1 and 0 <= mask_ratio <= 1 (a number or [low, high]), got {patch}, {ratio}")
    return float(low), float(high)


def check_style(style: str, max_patches: int) -> None:
    """One line unless ``style`` is a mask style and ``max_patches`` a count."""
    if style not in get_args(MaskStyle) or max_patches < 0:
        raise ValueError(f"mask_style must be grid or paper and mask_patches >= 0, got {style!r} and {max_patches}")


class MaskedCopies(Dataset):
    """Wraps a dataset: for every name in ``names`` adds ``<name>_masked`` and ``<name>_mask`` (``style`` ``grid``
    with ``patch`` and ``ratio``, or ``paper`` with ``patch`` and ``max_patches``)."""

    def __init__(self, base: Dataset, names: Sequence[str], patch: int = 7, ratio: float | Sequence[float] = 0.5, seed: int = 0,
                 style: MaskStyle = "grid", max_patches: int = 10) -> None:
        check_style(style, max_patches)
        self.base, self.names, self.patch, self.ratio, self.seed = base, tuple(names), patch, ratio_range(patch, ratio), seed
        self.style, self.max_patches = style, max_patches

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        rng = np.random.default_rng([self.seed, 7, i])
        for m in self.names:
            size = item[m].shape[-1]
            if self.style == "paper":
                mask, fill = paper_mask(size, self.patch, int(rng.integers(0, self.max_patches + 1)), rng), PAPER_FILL
            else:
                mask, fill = patch_mask(size, self.patch, rng.uniform(*self.ratio), rng), FILL
            item[f"{m}_mask"] = mask
            item[f"{m}_masked"] = item[m] * (1 - mask) + fill * mask
        return item
