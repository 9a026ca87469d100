"""Diffusion processes: a schedule, a loss and the samplers that go with them, as configurable modules.

* :class:`DDPMProcess` (Diff-MVAE*): T = 1000, eps or v prediction, the simple loss; DDIM (50 steps) or
  ancestral sampling.
* :class:`ScoreSDEProcess` (Diff-MVAE): VP-SDE with beta from 0.1 to 20, denoising score matching with a
  configurable lambda(t); Euler-Maruyama (1000 steps) with an optional Langevin corrector, or DDIM.
* :class:`VDMProcess`: fixed linear or learned log-SNR, discrete or continuous-time loss plus the
  reconstruction term on 8-bit pixel values and the prior term, so it gives bits per dimension; ancestral
  sampling.

Every process works on data in ``[-1, 1]`` (possibly shifted by a per-example ``shift``: the residual
conditioning of :class:`~decoders.diffusion_decoder.DiffusionDecoder`). Bad names (sampler, prediction,
weighting) fail when the process is built, i.e. at start-up.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from decoders.diffusion.losses import DDPMLoss, DSMLoss, VDMLoss, randn_like
from decoders.diffusion.parameterization import Prediction, check_prediction, make_denoiser
from decoders.diffusion.samplers import ancestral_sample, ddim_sample, euler_maruyama_sample
from decoders.diffusion.schedules import LinearLogSNR, Schedule, VPSchedule


class DiffusionProcess(nn.Module):
    """Base class. Subclasses set ``schedule``, ``prediction``, ``samplers`` (their names) and implement
    :meth:`loss` and :meth:`_sample`."""

    samplers: ClassVar[tuple[str, ...]] = ()
    schedule: Schedule
    prediction: Prediction = "eps"
    timesteps: int | None = None

    def __init__(self, sampler: str, steps: int) -> None:
        super().__init__()
        self.sampler, self.steps = self.check_sampler(sampler), self.check_steps(steps)

    def check_sampler(self, sampler: str) -> str:
        if sampler not in self.samplers:
            raise ValueError(f"unknown sampler {sampler!r} for {type(self).__name__}; choose one of {', '.join(self.samplers)}")
        return sampler

    @staticmethod
    def check_steps(steps: int) -> int:
        if steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {steps}")
        return steps

    def configure_sampling(self, steps: int | None = None, sampler: str | None = None) -> None:
        """Override the default sampler and its number of steps (``diffmvae sample --steps/--sampler``)."""
        if sampler is not None:
            self.sampler = self.check_sampler(sampler)
        if steps is not None:
            self.steps = self.check_steps(steps)

    def loss(self, net: nn.Module, x: Tensor, cond: Any = None, *, shift: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        """Per-example loss ``[B]`` of ``x`` (the diffused target; ``x + shift`` is the data in ``[-1, 1]``)."""
        raise NotImplementedError

    def sample(self, net: nn.Module, shape: tuple[int, ...], cond: Any = None, *, clip: tuple[Any, Any] | None = None,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu", start: float = 1.0,
               x_init: Tensor | None = None) -> Tensor:
        """A sample of the diffused target, ``shape``, with the configured sampler; ``start < 1`` begins the
        reverse process at that time from ``x_init`` (default 0) noised by the forward process."""
        denoise = make_denoiser(net, self.schedule, self.prediction, cond, clip)
        kw = {"generator": generator, "device": device, "start": start, "x_init": x_init}
        if self.sampler == "ddim":
            return ddim_sample(denoise, shape, schedule=self.schedule, steps=self.steps, eta=getattr(self, "eta", 0.0), timesteps=self.timesteps, **kw)
        if self.sampler == "ancestral":
            return ancestral_sample(denoise, shape, schedule=self.schedule, steps=self.steps, timesteps=self.timesteps, **kw)
        return self._sample(denoise, shape, **kw)

    def _sample(self, denoise, shape, *, generator, device, start, x_init) -> Tensor:  # pragma: no cover - only for extra samplers
        raise NotImplementedError


class DDPMProcess(DiffusionProcess):
    """DDPM / DDIM (Diff-MVAE*): ``T = timesteps``, ``prediction`` eps or v, DDPM's linear schedule (the VP
    schedule at ``t = i / T``) unless another is given."""

    samplers = ("ddim", "ancestral")

    def __init__(self, schedule: Schedule | None = None, timesteps: int = 1000, prediction: Prediction = "eps",
                 sampler: str = "ddim", steps: int = 50, eta: float = 0.0) -> None:
        super().__init__(sampler, steps)
        self.schedule = schedule if schedule is not None else VPSchedule()
        self.prediction, self.timesteps, self.eta = check_prediction(prediction), timesteps, eta
        self.diffusion_loss = DDPMLoss(self.schedule, timesteps=timesteps, prediction=prediction)

    def loss(self, net, x, cond=None, *, shift=None, generator=None):
        return self.diffusion_loss(net, x, cond, generator=generator)


class ScoreSDEProcess(DiffusionProcess):
    """The VP-SDE of Diff-MVAE: ``beta(t)`` linear from ``beta_min`` to ``beta_max``, DSM with ``weighting``
    (``variance``, ``likelihood`` or ``none``), Euler-Maruyama with ``corrector_steps`` Langevin steps.
    ``prediction`` is the backbone's output (eps, as in the paper, or v), the same score model either way."""

    samplers = ("euler_maruyama", "ddim")

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, weighting: str = "variance", sampler: str = "euler_maruyama",
                 steps: int = 1000, corrector_steps: int = 0, snr: float = 0.16, t_min: float = 1e-3, prediction: Prediction = "eps") -> None:
        super().__init__(sampler, steps)
        self.schedule = VPSchedule(beta_min, beta_max)
        self.prediction = check_prediction(prediction)
        self.diffusion_loss = DSMLoss(self.schedule, weighting=weighting, t_min=1e-5, prediction=self.prediction)
        self.corrector_steps, self.snr, self.t_min = corrector_steps, snr, t_min

    def loss(self, net, x, cond=None, *, shift=None, generator=None):
        return self.diffusion_loss(net, x, cond, generator=generator)

    def _sample(self, denoise, shape, *, generator, device, start, x_init):
        return euler_maruyama_sample(denoise, shape, schedule=self.schedule, steps=self.steps, t_min=self.t_min, corrector_steps=self.corrector_steps,
                                     snr=self.snr, generator=generator, device=device, start=start, x_init=x_init)


class VDMProcess(DiffusionProcess):
    """Variational diffusion (seed 002): ``-log p(x)`` bound = reconstruction (8-bit pixels) + diffusion + prior,
    in nats per example; ``timesteps`` ``None`` for the continuous-time loss. ``schedule``: a fixed
    :class:`~decoders.diffusion.LinearLogSNR` by default, or a :class:`~decoders.diffusion.LearnedLogSNR`."""

    samplers = ("ancestral", "ddim")
    BINS = 256

    def __init__(self, schedule: Schedule | None = None, timesteps: int | None = None, sampler: str = "ancestral", steps: int = 1000) -> None:
        super().__init__(sampler, steps)
        self.schedule = schedule if schedule is not None else LinearLogSNR()
        self.timesteps = timesteps
        self.diffusion_loss = VDMLoss(self.schedule, timesteps=timesteps)

    def reconstruction(self, x: Tensor, shift: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """``-log p(x | z_0)`` over the 256 pixel values of each dimension (seed 002 App. C), ``[B]``."""
        alpha_0, sigma_0 = self.schedule.alpha_sigma(torch.zeros(1, device=x.device, dtype=x.dtype))
        pixels = x if shift is None else x + shift
        index = ((pixels.clamp(-1, 1) + 1) * (self.BINS - 1) / 2).round().long()
        z_0 = alpha_0 * x + sigma_0 * randn_like(x, generator)
        grid = torch.linspace(-1, 1, self.BINS, device=x.device, dtype=x.dtype)
        means = grid if shift is None else grid - shift[..., None]
        logits = -0.5 * ((z_0[..., None] - alpha_0 * means) / sigma_0) ** 2
        nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, index[..., None])[..., 0]
        return nll.flatten(1).sum(dim=1)

    def loss(self, net, x, cond=None, *, shift=None, generator=None):
        return self.reconstruction(x, shift, generator) + self.diffusion_loss(net, x, cond, generator=generator)

    def bits_per_dim(self, net, x, cond=None, *, shift=None, generator=None) -> Tensor:
        """The bound in bits per dimension ``[B]``."""
        return self.loss(net, x, cond, shift=shift, generator=generator) / (x[0].numel() * math.log(2))
