"""Data parallelism over CPU threads inside one training step (``TrainingModule(thread_split=k)``).

On a CPU with few cores, the small convolutions of these models use their cores poorly: two cores running one
network on a batch of 128 images are far from twice as fast as one. Splitting the batch into ``k`` parts and
running each part's forward and backward pass on its own thread, the process's intra-op threads shared among them
(one each on two cores), keeps every core busy with work of its own (``experiments/benchmarks/step_speed.py`` measures it). This is the in-process analogue of
Lightning's DDP on CPU processes, without their gradient all-reduce and their copies of the model.

The objective is the unsplit step's: each part's mean loss is weighted by its share of the examples, and the parts'
gradients are added in a fixed order, so a fit is deterministic given its seed. Each part draws its noise from its
own generator, seeded from the step's generator, so the noise of a split step is not the unsplit step's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from diffmvae.data.batches import take_rows
from diffmvae.model.base import batch_size

_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per size: a thread keeps its OpenMP team between steps."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="diffmvae-split")
    return _POOLS[workers]


def split_examples(x: Mapping[str, Any], present: Tensor | None, parts: int) -> list[tuple[dict[str, Any], Tensor | None, float]]:
    """``x`` (modality tensors, or dicts of tensors for text) and its mask cut into ``parts`` consecutive slices of
    its examples, as ``(x_k, present_k, share_k)`` with ``share_k`` the slice's fraction of the examples; never an
    empty slice."""
    size = batch_size(x)
    parts = max(1, min(parts, size))
    cuts = [k * size // parts for k in range(parts + 1)]
    return [({m: take_rows(v, a, b) for m, v in x.items()}, None if present is None else present[a:b], (b - a) / size)
            for a, b in zip(cuts[:-1], cuts[1:])]


class _Precomputed(torch.autograd.Function):
    """A loss value whose backward pass hands the parameters gradients computed beforehand (scaled by the incoming
    gradient, so a gradient scaler's factor reaches them), so the trainer's ``loss.backward()``, gradient clipping
    and optimizer step run unchanged."""

    @staticmethod
    def forward(ctx, value: Tensor, grads: Sequence[Tensor | None], *params: Tensor) -> Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        return (None, None, *(None if g is None else g * grad_out.to(g.dtype) for g in ctx.grads))


PartLoss = Callable[[dict[str, Any], "Tensor | None", torch.Generator], tuple[Tensor, dict[str, Tensor]]]


def threaded_step(part_loss: PartLoss, x: Mapping[str, Any], present: Tensor | None, parts: int, generator: torch.Generator,
                  parameters: Sequence[nn.Parameter]) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of the batch, computed as ``parts`` slices on as many threads, each with ``torch.get_num_threads() //
    parts`` intra-op threads (at least one): ``part_loss(x_k, present_k, g_k)``
    returns a slice's mean loss and its logged means. Returns a loss whose backward pass gives ``parameters`` the
    gradient of ``sum_k share_k * loss_k`` (parameters that no slice reached get none), and the share-weighted means."""
    pieces = split_examples(x, present, parts)
    seeds = torch.randint(0, 2**62, (len(pieces),), generator=generator, device=generator.device).tolist()
    device, threads = generator.device, max(1, torch.get_num_threads() // len(pieces))
    autocast = {d: torch.get_autocast_dtype(d) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)}  # thread-local state

    def run(job: tuple[int, tuple[dict[str, Any], Tensor | None, float]]) -> tuple[Tensor, dict[str, Tensor], tuple[Tensor | None, ...]]:
        k, (x_k, present_k, share) = job
        torch.set_num_threads(threads)
        g = torch.Generator(device=device).manual_seed(seeds[k])
        with torch.enable_grad(), ExitStack() as regions:
            for d, dtype in autocast.items():  # the caller's autocast regions, re-entered on this thread
                regions.enter_context(torch.autocast(d, dtype=dtype))
            loss, means = part_loss(x_k, present_k, g)
            grads = torch.autograd.grad(loss * share, parameters, allow_unused=True)
        return loss.detach(), {n: v.detach() for n, v in means.items()}, grads

    results = list(_pool(len(pieces)).map(run, enumerate(pieces)))
    shares = [share for _, _, share in pieces]
    value = sum(s * r[0].float() for s, r in zip(shares, results))
    means = {n: sum(s * r[1][n].float() for s, r in zip(shares, results) if n in r[1]) for n in results[0][1]}
    grads = []
    for i in range(len(parameters)):
        got = [r[2][i] for r in results if r[2][i] is not None]
        grads.append(None if not got else sum(got[1:], got[0]))
    return _Precomputed.apply(value, grads, *parameters), means

