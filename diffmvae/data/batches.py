"""A modality's batch is a tensor, or a dict of tensors for text (token ids and mask): helpers that treat both alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from diffmvae.io import DiffMVAEError


def map_batch(value: Tensor | Mapping[str, Tensor], fn: Callable[[Tensor], Tensor]) -> Tensor | dict[str, Tensor]:
    """``fn`` applied to a modality's batch: a tensor, or each tensor of a text modality's dict."""
    return {k: fn(v) for k, v in value.items()} if isinstance(value, Mapping) else fn(value)


def cat_batches(values: Sequence[Tensor | Mapping[str, Tensor]]) -> Tensor | dict[str, Tensor]:
    """Concatenate one modality's batches along the examples (tensors, or text dicts key by key)."""
    if isinstance(values[0], Mapping):
        return {k: torch.cat([v[k] for v in values]) for k in values[0]}
    return torch.cat(list(values))


def take_rows(value: Tensor | Mapping[str, Tensor], start: int, stop: int, device: torch.device | str | None = None) -> Tensor | dict[str, Tensor]:
    """Examples ``start:stop`` of a modality's batch (tensor or text dict), moved to ``device``."""
    return map_batch(value, lambda v: v[start:stop] if device is None else v[start:stop].to(device))


def num_rows(value: Tensor | Mapping[str, Tensor]) -> int:
    return (next(iter(value.values())) if isinstance(value, Mapping) else value).shape[0]


def collate_split(dataset: Dataset, limit: int | None = None, batch_size: int = 512) -> dict[str, Tensor]:
    """A whole dataset (or its first ``limit`` items) as one dict of stacked tensors."""
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    batches = list(DataLoader(dataset, batch_size=batch_size))
    if not batches:
        raise DiffMVAEError("the dataset is empty")
    return {k: cat_batches([b[k] for b in batches]) for k in batches[0] if isinstance(batches[0][k], (Tensor, dict))}
