"""Data parallelism over CPU threads inside one training step (``TrainingModule(thread_split=k)``).

The batch's examples are cut into ``k`` consecutive parts and each part's forward and backward pass runs on its own
thread (:mod:`decoders.threads`; ``experiments/benchmarks/step_speed.py`` measures the gain). This is the in-process
analogue of Lightning's DDP on CPU processes, without their gradient all-reduce and their copies of the model.

The objective is the unsplit step's: each part's mean loss is weighted by its share of the examples, and the parts'
gradients are added in a fixed order, so a fit is deterministic given its seed. Each part draws its noise from its
own generator, seeded from the step's generator, so the noise of a split step is not the unsplit step's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from decoders.threads import cuts, gradient_on_threads
from diffmvae.data.batches import take_rows
from diffmvae.model.base import batch_size


def split_examples(x: Mapping[str, Any], present: Tensor | None, parts: int) -> list[tuple[dict[str, Any], Tensor | None, float]]:
    """``x`` (modality tensors, or dicts of tensors for text) and its mask cut into ``parts`` consecutive slices of
    its examples, as ``(x_k, present_k, share_k)`` with ``share_k`` the slice's fraction of the examples; never an
    empty slice."""
    size = batch_size(x)
    return [({m: take_rows(v, a, b) for m, v in x.items()}, None if present is None else present[a:b], (b - a) / size)
            for a, b in cuts(size, parts)]


PartLoss = Callable[[dict[str, Any], "Tensor | None", torch.Generator], tuple[Tensor, dict[str, Tensor]]]


def threaded_step(part_loss: PartLoss, x: Mapping[str, Any], present: Tensor | None, parts: int, generator: torch.Generator,
                  parameters: Sequence[nn.Parameter]) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of the batch, computed as ``parts`` slices on as many threads: ``part_loss(x_k, present_k, g_k)``
    returns a slice's mean loss and its logged means. Returns a loss whose backward pass gives ``parameters`` the
    gradient of ``sum_k share_k * loss_k`` (parameters that no slice reached get none), and the share-weighted means
    (:func:`decoders.threads.gradient_on_threads`)."""
    pieces = [((x_k, present_k), share) for x_k, present_k, share in split_examples(x, present, parts)]
    return gradient_on_threads(lambda inputs, g: part_loss(*inputs, g), pieces, generator, parameters)
