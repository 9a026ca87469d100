"""The order of training examples: a permutation fixed by ``(seed, epoch)``, so that a resumed run sees the same
batches as an uninterrupted one. Lightning sets the epoch (``set_epoch``); on a restart in the middle of an epoch the
LightningModule tells the sampler how many examples of it this process had done (:meth:`EpochSampler.resume`).

Under several processes the sampler shards the order itself (process ``rank`` takes every ``num_replicas``-th
example, the order padded to a multiple of ``num_replicas`` by repeating its start, as ``DistributedSampler`` does).
It is a ``DistributedSampler``, so Lightning leaves it in place instead of wrapping it, and a resumed process skips
exactly the examples of its own shard that it had done."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    """A fresh permutation of ``range(n)`` each epoch, drawn from ``torch.Generator().manual_seed(seed, epoch)``, of
    which this process takes its shard.

    ``offset_epochs``: yield ``i + epoch * n`` instead of ``i``, for data sets that show each example differently in
    each epoch (``views_per_epoch``: CUB draws one of an image's ten captions per epoch); they read the example as
    ``index % n`` and the epoch as ``index // n``, which keeps the draw deterministic under workers, DDP and resume."""

    def __init__(self, n: int, seed: int, offset_epochs: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        # DistributedSampler's own __init__ wants a dataset and an initialised process group; only its type is used.
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.n, self.seed, self.epoch, self._skip, self.offset_epochs = n, seed, 0, 0, offset_epochs
        self.num_replicas, self.rank = num_replicas, rank
        self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, examples_done: int) -> None:
        """Leave out the first ``examples_done`` examples of this process's share of the current epoch, once."""
        self._skip = examples_done

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        if self.num_replicas > 1:
            order = (order * math.ceil(self.total_size / max(self.n, 1)))[: self.total_size][self.rank :: self.num_replicas]
        skip, self._skip = self._skip, 0
        offset = self.epoch * self.n if self.offset_epochs else 0
        yield from (i + offset for i in order[skip:])
