"""Subset families of the mixture posterior as (subsets x modalities) 0/1 masks."""

from __future__ import annotations

from itertools import combinations
from typing import Literal, get_args

import torch
from torch import Tensor

SubsetFamily = Literal["mopoe", "poe", "moe"]


def subset_mask(num_modalities: int, family: SubsetFamily = "mopoe") -> Tensor:
    """Bool mask ``[S, M]``, one row per subset of the family.

    ``mopoe``: all ``2^M - 1`` non-empty subsets, ordered by size, then lexicographically.
    ``poe``: the full set only (MVAE). ``moe``: the ``M`` singletons (MMVAE).
    """
    if family not in get_args(SubsetFamily):
        raise ValueError(f"unknown subset family {family!r}; expected one of {', '.join(get_args(SubsetFamily))}")
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
    sizes = {"mopoe": range(1, num_modalities + 1), "poe": [num_modalities], "moe": [1]}[family]
    rows = [c for k in sizes for c in combinations(range(num_modalities), k)]
    mask = torch.zeros(len(rows), num_modalities, dtype=torch.bool)
    for i, row in enumerate(rows):
        mask[i, list(row)] = True
    return mask


def subset_names(mask: Tensor, modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The modality names of each row of ``mask`` ``[S, M]``."""
    return [tuple(m for m, on in zip(modalities, row.tolist()) if on) for row in mask]
