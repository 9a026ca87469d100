"""The auxiliary latent score prior (Wesego & Rooshenas 2024 §6.3-6.5): a DDPM over ``z`` with a 1-D UNet backbone,
trained on the aggregate posterior of a trained model and sampled with DDIM.

Latent standardisation lives inside the prior: :meth:`ScorePrior.set_statistics` stores the per-coordinate
mean and standard deviation of the training latents and the range of the standardised latents; the diffusion
runs on standardised latents, the predicted clean latent is clipped to that range at every sampler step (the
guard against blow-up at high noise), and :meth:`ScorePrior.sample` returns latents in the model's units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from decoders.diffusion import DDIM, DDPMLoss, ForwardProcess, Prediction, Schedule, make_denoiser
from decoders.diffusion.parameterization import check_prediction
from decoders.diffusion.schedules import CosineSchedule
from priors.unet1d import UNet1d


class ScorePrior(nn.Module):
    """``p(z)`` as a diffusion model over standardised latents.

    Args:
        latent_dim: ``d``, the size of ``z``.
        channels: the :class:`~priors.unet1d.UNet1d` backbone's channels per level.
        emb_dim: the size of its time embedding.
        attention: self-attention at the coarsest level.
        prediction: what the backbone predicts, ``eps``, ``v`` (default) or ``x0``.
        timesteps: ``T`` of the discrete DDPM loss (1000).
        schedule: noise schedule; a :class:`~decoders.diffusion.CosineSchedule` by default.
        sample_steps: DDIM steps of :meth:`sample` (50).
        eta: DDIM's eta in :meth:`sample` (0: deterministic).
        clip_margin: the clean-latent clip range is the training latents' standardised range times this.
    """

    def __init__(
        self,
        latent_dim: int,
        channels: Sequence[int] = (64, 128, 256),
        emb_dim: int = 128,
        attention: bool = True,
        prediction: Prediction = "v",
        timesteps: int = 1000,
        schedule: Schedule | None = None,
        sample_steps: int = 50,
        eta: float = 0.0,
        clip_margin: float = 1.1,
    ) -> None:
        super().__init__()
        if sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {sample_steps}")
        self.latent_dim = latent_dim
        self.net = UNet1d(latent_dim, channels, emb_dim, attention)
        self.forward_process = ForwardProcess(schedule if schedule is not None else CosineSchedule())
        self.diffusion_loss = DDPMLoss(self.forward_process, timesteps=timesteps, prediction=check_prediction(prediction))
        self.sample_steps, self.eta, self.clip_margin = sample_steps, eta, clip_margin
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("std", torch.ones(latent_dim))
        self.register_buffer("low", torch.full((latent_dim,), -5.0))
        self.register_buffer("high", torch.full((latent_dim,), 5.0))

    def _check(self, z: Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"ScorePrior over d={self.latent_dim} got latents of shape {list(z.shape)}")

    @torch.no_grad()
    def set_statistics(self, z: Tensor) -> None:
        """Standardisation and clip range from training latents ``z [N, d]`` (call once, before training)."""
        self._check(z)
        self.mean.copy_(z.mean(0))
        self.std.copy_(z.std(0).clamp_min(1e-4))
        u = self.standardize(z)
        half_width = self.clip_margin * 0.5 * (u.amax(0) - u.amin(0))
        centre = 0.5 * (u.amax(0) + u.amin(0))
        self.low.copy_(centre - half_width)
        self.high.copy_(centre + half_width)

    def standardize(self, z: Tensor) -> Tensor:
        return (z - self.mean) / self.std

    def loss(self, z: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The DDPM loss on standardised latents, ``[B]``, averaged over the ``d`` coordinates (the library's
        diffusion losses sum; the prior is no ELBO term, and the mean keeps its fit settings independent of ``d``)."""
        self._check(z)
        return self.diffusion_loss(self.net, self.standardize(z), generator=generator) / self.latent_dim

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        start: float = 1.0,
        anchor: Tensor | None = None,
    ) -> Tensor:
        """``[n, latent_dim]`` latents in the model's units: DDIM (``sample_steps`` steps by default). With ``start < 1``
        the reverse process begins at that time from ``anchor`` (``[n, latent_dim]`` latents) noised to it: a draw near
        ``anchor`` under the prior (what :func:`diffmvae.traversal.prior_walk` chains)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if (start < 1.0) != (anchor is not None):
            raise ValueError("a start below 1 needs an anchor (the latents to noise), and an anchor a start below 1")
        device = self.mean.device if device is None else device
        marginal = self.forward_process.given()
        denoise = make_denoiser(self.net, marginal, self.diffusion_loss.prediction, clip=(self.low, self.high))
        sampler = DDIM(steps=steps or self.sample_steps, eta=self.eta if eta is None else eta)
        scaled = None if anchor is None else ((anchor.to(device, self.mean.dtype) - self.mean) / self.std)
        u = sampler(denoise, marginal, (n, self.latent_dim), timesteps=self.diffusion_loss.timesteps, generator=generator, device=device,
                    dtype=self.mean.dtype, start=start, anchor=scaled)
        return u * self.std + self.mean

    def with_steps(self, steps: int) -> PriorSampling:
        """This prior drawn with ``steps`` DDIM steps, as a value to pass to generation (``prior=``); the prior itself
        keeps its own ``sample_steps``."""
        if steps < 1:
            raise ValueError(f"prior steps must be >= 1, got {steps}")
        return PriorSampling(self, steps)


@dataclass(frozen=True)
class PriorSampling:
    """A :class:`ScorePrior` and the DDIM steps to draw it with (:meth:`ScorePrior.with_steps`)."""

    prior: ScorePrior
    steps: int

    def sample(self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        return self.prior.sample(n, generator=generator, device=device, steps=self.steps)
