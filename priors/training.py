"""Fitting a latent prior to draws of the aggregate posterior: AdamW, linear warm-up then cosine decay, an EMA
of the weights (copied into the prior at the end), a progress bar."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from torch_ema import ExponentialMovingAverage
from tqdm.auto import tqdm

from decoders.optim import lr_factor
from decoders.threads import cuts, gradient_on_threads, parts_on
from priors.score import ScorePrior

log = logging.getLogger(__name__)

# ``draw(batch_size, generator) -> z [batch_size, d]``: fresh samples of the latent distribution to model.
LatentSampler = Callable[[int, torch.Generator], Tensor]


@dataclass(frozen=True)
class PriorFitConfig:
    """Optimisation settings of :func:`fit_score_prior`."""

    steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    statistics_samples: int = 20_000
    thread_split: int = 1
    """Each batch cut into this many parts, each part's forward and backward pass on its own CPU thread
    (:mod:`decoders.threads`): the same objective, faster on a CPU with few cores; ignored on a GPU."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "statistics_samples", "thread_split"):
            if getattr(self, name) < 1:
                raise ValueError(f"prior fit: {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"prior fit: ema_decay must be in [0, 1), got {self.ema_decay}")


def fit_score_prior(
    prior: ScorePrior,
    draw: LatentSampler,
    config: PriorFitConfig = PriorFitConfig(),
    *,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``prior`` in place on latents from ``draw``; ends with the EMA weights loaded. Returns the training
    loss every 50 steps (for a log or a plot)."""
    generator = torch.Generator().manual_seed(seed)
    prior.set_statistics(draw(config.statistics_samples, generator))
    params = list(prior.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, schedule="cosine", warmup=config.warmup_steps, total=config.steps))
    ema = ExponentialMovingAverage(params, decay=config.ema_decay)
    prior.train()
    split = parts_on(prior.mean.device, config.thread_split)
    if split != config.thread_split:
        log.warning("prior fit: thread_split=%d applies on a CPU only; fitting on %s unsplit", config.thread_split, prior.mean.device)

    def part_loss(z: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        return prior.loss(z, generator=g).mean(), {}

    losses, running = [], 0.0
    bar = tqdm(range(config.steps), desc="prior fit", disable=not progress, leave=False)
    for step in bar:
        z = draw(config.batch_size, generator).to(prior.mean.device)
        if split > 1:
            loss = gradient_on_threads(part_loss, [(z[a:b], (b - a) / len(z)) for a, b in cuts(len(z), split)], generator, params)[0]
        else:
            loss = part_loss(z, generator)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        sched.step()
        ema.update()
        running += loss.item()
        if (step + 1) % 50 == 0:
            losses.append(running / 50)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            running = 0.0
    with torch.no_grad():
        ema.copy_to(params)
    prior.eval()
    return losses
