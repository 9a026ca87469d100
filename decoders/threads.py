"""Work split over CPU threads inside one process: a batch cut into parts, each part on its own thread.

On a CPU with few cores, the small convolutions of these models use their cores poorly: two cores running one
network on a batch are far from twice as fast as one. Running each part of the batch on its own thread, the
process's intra-op threads shared among them (one each for two parts on two cores), keeps every core busy with work
of its own. Every trainer and sampler of the library can use it (the multimodal VAE's ``thread_split``, the latent
prior's fit, sampling); ``priors`` and ``diffmvae`` both depend on ``decoders``, so this is the lowest common place.

Each part draws its randomness from its own generator, seeded from the caller's generator in a fixed order, and the
results come back in the parts' order, so the outcome is deterministic given the seed (it is not the unsplit
computation's: the noise differs). The caller's thread-local state -- autocast regions, grad and inference mode --
is re-entered on every worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per size: a thread keeps its OpenMP team between calls."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="diffmvae-split")
    return _POOLS[workers]


def cuts(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive ``(start, stop)`` ranges covering ``range(size)``, as equal as integers allow; never an
    empty one (fewer ranges when ``size < parts``)."""
    parts = max(1, min(parts, size))
    ends = [k * size // parts for k in range(parts + 1)]
    return list(zip(ends[:-1], ends[1:]))


def parts_on(device: torch.device | str, parts: int) -> int:
    """How many threads a split into ``parts`` uses on ``device``: ``parts`` on a CPU, one elsewhere (a GPU already
    runs the batch in parallel, and its kernels are queued from one thread)."""
    return parts if torch.device(device).type == "cpu" else 1


def run_on_threads(work: Callable[[T, torch.Generator], R], parts: Sequence[T], generator: torch.Generator) -> list[R]:
    """``[work(part, g_k) for part in parts]``, each call on its own thread with ``torch.get_num_threads() //
    len(parts)`` intra-op threads (at least one) and its own generator ``g_k`` (on ``generator``'s device, seeded
    from ``generator``), under the caller's autocast regions and grad / inference mode."""
    seeds = torch.randint(0, 2**62, (len(parts),), generator=generator, device=generator.device).tolist()
    device, threads = generator.device, max(1, torch.get_num_threads() // max(len(parts), 1))
    autocast = {d: torch.get_autocast_dtype(d) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)}  # thread-local state
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(job: tuple[int, T]) -> R:
        k, part = job
        torch.set_num_threads(threads)
        with ExitStack() as regions:
            regions.enter_context(torch.inference_mode() if inference else torch.set_grad_enabled(grad))
            for d, dtype in autocast.items():
                regions.enter_context(torch.autocast(d, dtype=dtype))
            return work(part, torch.Generator(device=device).manual_seed(seeds[k]))

    return list(_pool(len(parts)).map(run, enumerate(parts)))


class _Precomputed(torch.autograd.Function):
    """A loss value whose backward pass hands the parameters gradients computed beforehand (scaled by the incoming
    gradient, so a gradient scaler's factor reaches them), so the caller's ``loss.backward()``, gradient clipping
    and optimizer step run unchanged."""

    @staticmethod
    def forward(ctx, value: Tensor, grads: Sequence[Tensor | None], *params: Tensor) -> Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        return (None, None, *(None if g is None else g * grad_out.to(g.dtype) for g in ctx.grads))


PartLoss = Callable[[Any, torch.Generator], tuple[Tensor, dict[str, Tensor]]]


def gradient_on_threads(part_loss: PartLoss, parts: Sequence[tuple[Any, float]], generator: torch.Generator,
                        parameters: Sequence[nn.Parameter]) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of a batch given as ``(inputs_k, share_k)`` parts (``share_k`` the part's fraction of the examples),
    each part's forward and backward pass on its own thread (:func:`run_on_threads`): ``part_loss(inputs_k, g_k)``
    returns the part's mean loss and its logged means. Returns a loss whose backward pass gives ``parameters`` the
    gradient of ``sum_k share_k * loss_k`` (the parts' gradients added in a fixed order; parameters no part reached
    get none), and the share-weighted means."""

    def work(part: tuple[Any, float], g: torch.Generator) -> tuple[Tensor, dict[str, Tensor], tuple[Tensor | None, ...]]:
        inputs, share = part
        with torch.enable_grad():
            loss, means = part_loss(inputs, g)
            grads = torch.autograd.grad(loss * share, parameters, allow_unused=True)
        return loss.detach(), {n: v.detach() for n, v in means.items()}, grads

    results = run_on_threads(work, parts, generator)
    shares = [share for _, share in parts]
    value = sum(s * r[0].float() for s, r in zip(shares, results))
    means = {n: sum(s * r[1][n].float() for s, r in zip(shares, results) if n in r[1]) for n in results[0][1]}
    grads = []
    for i in range(len(parameters)):
        got = [r[2][i] for r in results if r[2][i] is not None]
        grads.append(None if not got else sum(got[1:], got[0]))
    return _Precomputed.apply(value, grads, *parameters), means
