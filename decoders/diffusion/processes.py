"""Diffusion processes: a forward process, a loss, a backbone parameterisation and a default sampler, bundled as
configurable modules.

* :class:`DDPMProcess` (Diff-MVAE*): T = 1000, eps or v prediction, the simple loss; DDIM-50 by default.
* :class:`ScoreSDEProcess` (Diff-MVAE): VP-SDE with beta from 0.1 to 20, denoising score matching with a
  configurable lambda(t); Euler-Maruyama (1000 steps) by default.
* :class:`VDMProcess`: fixed linear or learned log-SNR, discrete or continuous-time loss plus the reconstruction
  term on 8-bit pixel values and the prior term, so it gives bits per dimension; ancestral sampling.

Every process works on data scaled to ``[-1, 1]`` and returns its loss as named per-example terms summed over
the data dimensions (:meth:`DiffusionProcess.loss`). The sampler is a value: the process holds only its
default, and :meth:`DiffusionProcess.sample` takes the one to use. Bad names fail when the process is built.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from decoders.diffusion.forward import ForwardProcess, Marginal
from decoders.diffusion.losses import DDPMLoss, DSMLoss, VDMLoss, sum_event
from decoders.diffusion.parameterization import Backbone, Denoiser, Prediction, check_prediction, make_denoiser
from decoders.diffusion.samplers import DDIM, Ancestral, EulerMaruyama, Sampler
from decoders.diffusion.schedules import LinearLogSNR, Schedule, VPSchedule
from decoders.random import randn


class DiffusionProcess(nn.Module):
    """Base class. Subclasses set ``forward_process`` (a :class:`~decoders.diffusion.forward.ForwardProcess`),
    ``prediction``, ``timesteps`` (the training grid, ``None`` for continuous time), ``sampler`` (the default)
    and ``bound`` (whether the loss terms bound ``-log p(x)``), and implement :meth:`loss`."""

    forward_process: ForwardProcess
    prediction: Prediction = "eps"
    timesteps: int | None = None
    bound: bool = False

    def __init__(self, sampler: Sampler) -> None:
        super().__init__()
        self.sampler = sampler

    def check_sampler(self, sampler: Sampler) -> Sampler:
        """``sampler`` itself, or a one-line ``ValueError`` when it cannot sample this process."""
        if not isinstance(sampler, Sampler):
            raise ValueError(f"{sampler!r} is not a decoders.diffusion.Sampler")
        sampler.check(self.forward_process)
        return sampler

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_process.alpha_sigma(t)

    def loss(self, net: Backbone, x: Tensor, cond: Any = None, *, marginal: Marginal | None = None, anchor: Tensor | None = None,
             generator: torch.Generator | None = None) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """Named per-example terms ``{"diffusion": [B], ...}`` of data ``x`` in ``[-1, 1]``. ``anchor`` is the
        point the model's prior at ``t = 1`` is centred on (a residual decoder's mean), ``marginal`` the forward
        process bound to the batch's forward condition."""
        raise NotImplementedError

    def denoiser(self, net: Backbone, cond: Any = None, *, marginal: Marginal | None = None, clip: tuple[Any, Any] | None = None) -> Denoiser:
        return make_denoiser(net, marginal if marginal is not None else self.forward_process.given(), self.prediction, cond, clip)

    def sample(self, denoise: Denoiser, shape: tuple[int, ...], *, sampler: Sampler | None = None, marginal: Marginal | None = None,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu", start: float = 1.0,
               anchor: Tensor | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """A sample ``shape`` with ``sampler`` (default: the process's own); ``start < 1`` begins the reverse
        process at that time from ``anchor`` noised by the forward process."""
        sampler = self.check_sampler(sampler if sampler is not None else self.sampler)
        return sampler(denoise, marginal if marginal is not None else self.forward_process.given(), shape, timesteps=self.timesteps,
                       generator=generator, device=device, start=start, anchor=anchor, dtype=dtype)


class DDPMProcess(DiffusionProcess):
    """DDPM / DDIM (Diff-MVAE*): ``T = timesteps``, ``prediction`` eps or v, DDPM's linear schedule (the VP
    schedule at ``t = i / T``) unless another is given; DDIM with 50 steps by default. ``forward``: another forward
    process on that schedule (MT-Diffusion's :class:`~decoders.diffusion.aggregation.AggregatedForward`); the
    loss and the samplers follow its marginal. ``max_weight``: the loss's cap on its weight of the clean image's
    squared error (:class:`~decoders.diffusion.losses.DDPMLoss`; ``None``, DDPM's simple loss, by default)."""

    def __init__(self, schedule: Schedule | None = None, timesteps: int = 1000, prediction: Prediction = "eps",
                 sampler: Sampler | None = None, forward: ForwardProcess | None = None, max_weight: float | None = None) -> None:
        super().__init__(sampler if sampler is not None else DDIM(steps=50))
        if forward is not None and schedule is not None and forward.schedule is not schedule:
            raise ValueError("DDPMProcess takes a schedule or a forward process on it, not two schedules")
        self.forward_process = forward if forward is not None else ForwardProcess(schedule if schedule is not None else VPSchedule())
        self.prediction, self.timesteps = check_prediction(prediction), timesteps
        self.diffusion_loss = DDPMLoss(self.forward_process, timesteps=timesteps, prediction=prediction, max_weight=max_weight)
        self.check_sampler(self.sampler)

    def loss(self, net, x, cond=None, *, marginal=None, anchor=None, generator=None):
        return {"diffusion": self.diffusion_loss(net, x, cond, marginal=marginal, generator=generator)}


class ScoreSDEProcess(DiffusionProcess):
    """The VP-SDE of Diff-MVAE: ``beta(t)`` linear from ``beta_min`` to ``beta_max``, DSM with ``weighting``
    (``variance``, ``likelihood`` or ``none``); Euler-Maruyama with 1000 steps by default. ``prediction`` is
    the backbone's output (eps, as in the paper, or v), the same score model either way."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, weighting: str = "variance", prediction: Prediction = "eps",
                 sampler: Sampler | None = None) -> None:
        super().__init__(sampler if sampler is not None else EulerMaruyama(steps=1000))
        self.forward_process = ForwardProcess(VPSchedule(beta_min, beta_max))
        self.prediction = check_prediction(prediction)
        self.diffusion_loss = DSMLoss(self.forward_process, weighting=weighting, t_min=1e-5, prediction=self.prediction)
        self.check_sampler(self.sampler)

    def loss(self, net, x, cond=None, *, marginal=None, anchor=None, generator=None):
        return {"diffusion": self.diffusion_loss(net, x, cond, marginal=marginal, generator=generator)}


class VDMProcess(DiffusionProcess):
    """Variational diffusion (Kingma et al. 2021): ``-log p(x)`` bound = reconstruction (8-bit pixels) + diffusion + prior,
    in nats per example; ``timesteps`` ``None`` for the continuous-time loss. ``schedule``: a fixed
    :class:`~decoders.diffusion.LinearLogSNR` by default, or a :class:`~decoders.diffusion.LearnedLogSNR`.
    The backbone predicts eps. Ancestral sampling with 1000 steps by default."""

    BINS = 256
    bound = True

    def __init__(self, schedule: Schedule | None = None, timesteps: int | None = None, sampler: Sampler | None = None) -> None:
        super().__init__(sampler if sampler is not None else Ancestral(steps=1000))
        self.forward_process = ForwardProcess(schedule if schedule is not None else LinearLogSNR())
        self.timesteps = timesteps
        self.diffusion_loss = VDMLoss(self.forward_process, timesteps=timesteps)
        self.check_sampler(self.sampler)

    def bin_log_probs(self, z_0: Tensor) -> Tensor:
        """``log p(k | z_0)`` for each of the 256 values ``v_k`` of every dimension, ``[..., 256]``: a softmax over the
        Gaussian log-densities ``log N(z_0; alpha_0 v_k, sigma_0^2)`` (Kingma et al. 2021 App. C)."""
        alpha_0, sigma_0 = self.forward_process.alpha_sigma(torch.zeros(1, device=z_0.device, dtype=z_0.dtype))
        grid = torch.linspace(-1, 1, self.BINS, device=z_0.device, dtype=z_0.dtype)
        return torch.log_softmax(-0.5 * ((z_0[..., None] - alpha_0 * grid) / sigma_0) ** 2, dim=-1)

    def reconstruction(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``-log p(x | z_0)`` summed over the dimensions of ``x`` in ``[-1, 1]``, ``[B]``, with ``z_0 = alpha_0 x +
        sigma_0 eps`` and ``x`` read as its nearest of the 256 values."""
        alpha_0, sigma_0 = self.forward_process.alpha_sigma(torch.zeros(1, device=x.device, dtype=x.dtype))
        index = ((x.clamp(-1, 1) + 1) * (self.BINS - 1) / 2).round().long()
        z_0 = alpha_0 * x + sigma_0 * randn(tuple(x.shape), generator, x.device, x.dtype)
        return -sum_event(self.bin_log_probs(z_0).gather(-1, index[..., None])[..., 0])

    def loss(self, net, x, cond=None, *, marginal=None, anchor=None, generator=None):
        t = self.diffusion_loss.sample_t(x.shape[0], generator, x)
        eps = randn(tuple(x.shape), generator, x.device, x.dtype)
        return {"recon": self.reconstruction(x, generator),
                "diffusion": self.diffusion_loss.diffusion_term(net, x, eps, t, cond, marginal),
                "prior": self.diffusion_loss.prior_term(x, anchor)}

    @staticmethod
    def bits_per_dim(terms: dict[str, Tensor], x: Tensor) -> Tensor:
        """The bound ``recon + diffusion + prior`` in bits per dimension ``[B]``."""
        return sum(terms.values()) / (x[0].numel() * math.log(2))
