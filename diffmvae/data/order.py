"""The order of training examples: a permutation fixed by ``(seed, epoch)``, so that a resumed run sees the same
batches as an uninterrupted one. Lightning sets the epoch (``set_epoch``); on a restart in the middle of an epoch the
LightningModule tells the sampler how many batches of it were done (:meth:`EpochSampler.resume`)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """A fresh permutation of ``range(n)`` each epoch, drawn from ``torch.Generator().manual_seed(seed, epoch)``.

    ``offset_epochs``: yield ``i + epoch * n`` instead of ``i``, for data sets that show each example differently in
    each epoch (``views_per_epoch``: CUB draws one of an image's ten captions per epoch); they read the example as
    ``index % n`` and the epoch as ``index // n``, which keeps the draw deterministic under workers, DDP and resume."""

    def __init__(self, n: int, seed: int, offset_epochs: bool = False) -> None:
        self.n, self.seed, self.epoch, self._skip, self.offset_epochs = n, seed, 0, 0, offset_epochs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, examples_done: int) -> None:
        """Leave out the first ``examples_done`` examples of the current epoch's order, once."""
        self._skip = examples_done

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        skip, self._skip = self._skip, 0
        offset = self.epoch * self.n if self.offset_epochs else 0
        yield from (i + offset for i in order[skip:])
