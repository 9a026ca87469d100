"""Diffusion losses as callables ``loss(net, x, cond, generator=...) -> [B]`` (unreduced, per example)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from decoders.diffusion.parameterization import Prediction, check_prediction, expand, target
from decoders.diffusion.schedules import Schedule


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device and moved to ``x``'s."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def rand(n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """``[n]`` uniforms on ``[0, 1)``, drawn on the generator's device, on ``like``'s device and dtype."""
    device = generator.device if generator is not None else like.device
    return torch.rand(n, generator=generator, device=device).to(device=like.device, dtype=like.dtype)


class DDPMLoss:
    """DDPM's simple loss (Ho et al. 2020 eq. 14): ``mean ||target - net(x_t, t, cond)||^2`` over non-batch dims,
    with ``t = i / T``, ``i ~ U{1..T}`` (``timesteps = T``), or ``t ~ U(0, 1]`` when ``timesteps`` is ``None``.

    ``prediction`` picks the target: ``eps``, ``v`` or ``x0``.
    """

    def __init__(self, schedule: Schedule, *, timesteps: int | None = 1000, prediction: Prediction = "eps") -> None:
        if timesteps is not None and timesteps < 1:
            raise ValueError(f"timesteps must be >= 1 or None, got {timesteps}")
        self.schedule, self.timesteps, self.prediction = schedule, timesteps, check_prediction(prediction)

    def sample_t(self, n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """Training times ``[n]`` in ``(0, 1]``."""
        u = rand(n, generator, like)
        if self.timesteps is None:
            return 1.0 - u  # (0, 1]
        return (torch.floor(u * self.timesteps) + 1) / self.timesteps

    def __call__(self, net: nn.Module, x: Tensor, cond: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        t = self.sample_t(x.shape[0], generator, x)
        eps = randn_like(x, generator)
        alpha, sigma = self.schedule.alpha_sigma(t)
        x_t = expand(alpha, x) * x + expand(sigma, x) * eps
        err = net(x_t, t, cond) - target(self.prediction, x, eps, alpha, sigma)
        return err.pow(2).flatten(1).mean(dim=1)
