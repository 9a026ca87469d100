"""Noise schedules: small objects of pure functions of continuous time ``t`` in ``[0, 1]``.

Every schedule is defined by its log signal-to-noise ratio ``log_snr(t)`` (VDM's ``-gamma(t)``), decreasing in
``t``; the variance-preserving marginals follow, ``q(x_t|x) = N(alpha_t x, sigma_t^2 I)`` with
``alpha_t^2 = sigmoid(log_snr)`` and ``sigma_t^2 = sigmoid(-log_snr)`` (VDM eq. 3-4). Discrete-time models
(DDPM's ``T = 1000``) evaluate the same functions at ``t = i / T``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn


class Schedule(nn.Module):
    """Base class; subclasses implement :meth:`log_snr`. Learned schedules are ordinary ``nn.Module`` s.

    :attr:`has_beta`: whether the schedule is a VP-SDE with a drift coefficient :meth:`beta` (what Euler-Maruyama
    and the likelihood weighting need)."""

    has_beta: ClassVar[bool] = False

    def log_snr(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``log SNR(t) = log(alpha_t^2 / sigma_t^2)``, same shape as ``t``."""
        raise NotImplementedError

    def beta(self, t: Tensor) -> Tensor:
        """``beta(t)`` of a VP-SDE schedule (:attr:`has_beta`)."""
        raise NotImplementedError(f"{type(self).__name__} has no beta(t)")

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)``, each shaped like ``t``."""
        log_snr = self.log_snr(t)
        return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()


class VPSchedule(Schedule):
    """The VP-SDE with ``beta(t)`` linear from ``beta_min`` to ``beta_max`` (Song et al. 2021); its
    discretisation at ``t = i / 1000`` is DDPM's linear schedule (betas 1e-4 ... 0.02).

    ``alpha_t^2 = exp(-B(t))``, ``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2``, so
    ``log_snr(t) = -log(expm1(B(t)))``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        super().__init__()
        if not 0 < beta_min < beta_max:
            raise ValueError(f"VPSchedule needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = beta_min, beta_max

    has_beta: ClassVar[bool] = True

    def integral_beta(self, t: Tensor) -> Tensor:
        """``B(t) = int_0^t beta(s) ds``."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def beta(self, t: Tensor) -> Tensor:
        """``beta(t)``, the SDE's drift coefficient ``dx = -beta/2 x dt + sqrt(beta) dw``."""
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def log_snr(self, t: Tensor) -> Tensor:
        return -torch.log(torch.expm1(self.integral_beta(t.double()))).to(t.dtype)


class CosineSchedule(Schedule):
    """``alpha_t = cos(pi t / 2)`` shifted so that ``log_snr`` runs from ``log_snr_max`` at ``t = 0`` to
    ``log_snr_min`` at ``t = 1``: ``log_snr(t) = -2 log tan(a t + b)`` (Nichol & Dhariwal 2021; Kingma & Gao
    2023, "Understanding diffusion objectives")."""

    def __init__(self, log_snr_min: float = -15.0, log_snr_max: float = 15.0) -> None:
        super().__init__()
        if not log_snr_min < log_snr_max:
            raise ValueError(f"CosineSchedule needs log_snr_min < log_snr_max, got {log_snr_min}, {log_snr_max}")
        self.b = math.atan(math.exp(-0.5 * log_snr_max))
        self.a = math.atan(math.exp(-0.5 * log_snr_min)) - self.b

    def log_snr(self, t: Tensor) -> Tensor:
        return (-2.0 * torch.log(torch.tan(self.a * t.double() + self.b))).to(t.dtype)


class ShiftedSchedule(Schedule):
    """Another schedule's ``log_snr`` moved by a constant: ``log_snr(t) = base.log_snr(t) + shift``.

    ``x_t / sigma_t`` under the shifted schedule is distributed as ``(c x)_t / sigma_t`` under the base one, with
    ``c = e^{shift/2}``: a positive shift treats the data as larger than it is, so the chain spends more of its time
    where structure of the data's size is decided (Hoogeboom, Heek & Salimans 2023, "simple diffusion", shift the
    schedule by resolution; Chen 2023, "On the importance of noise scheduling for diffusion models"). A diffusion
    decoder with ``conditioning: residual`` models ``x - mean(z)``, whose spread is a fraction ``s`` of the image's;
    ``shift = -2 log s`` gives it the base schedule's signal-to-noise ratios for data of the image's size.

    ``ramp``: the shift grows linearly in time, ``log_snr(t) = base.log_snr(t) + shift * t``, so the least noisy
    level (``t = 0``) stays the base's and the noisiest moves by ``shift``: a negative ramp spends more of the chain
    (and of uniform training times) at high noise without coarsening the last denoising steps."""

    def __init__(self, base: Schedule, shift: float, ramp: bool = False) -> None:
        super().__init__()
        if not math.isfinite(shift):
            raise ValueError(f"ShiftedSchedule needs a finite shift, got {shift}")
        self.base, self.shift, self.ramp = base, float(shift), bool(ramp)
        if self.ramp:
            grid = self.log_snr(torch.linspace(0.0, 1.0, 1001, dtype=torch.float64))
            if not bool((grid.diff() < 0).all()):
                raise ValueError(f"ShiftedSchedule: a ramp of {shift} makes log_snr increase somewhere in t; use a smaller shift")

    def log_snr(self, t: Tensor) -> Tensor:
        return self.base.log_snr(t) + (self.shift * t if self.ramp else self.shift)


class LinearLogSNR(Schedule):
    """VDM's fixed schedule: ``gamma(t) = -log_snr(t)`` linear from ``gamma_min`` to ``gamma_max``."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0) -> None:
        super().__init__()
        if not gamma_min < gamma_max:
            raise ValueError(f"LinearLogSNR needs gamma_min < gamma_max, got {gamma_min}, {gamma_max}")
        self.gamma_min, self.gamma_max = gamma_min, gamma_max

    def log_snr(self, t: Tensor) -> Tensor:
        return -(self.gamma_min + (self.gamma_max - self.gamma_min) * t)


class LearnedLogSNR(Schedule):
    """VDM's learned monotone schedule (Kingma et al. 2021 App. H): ``gamma(t) = gamma_0 + (gamma_1 - gamma_0)
    * (g(t) - g(0)) / (g(1) - g(0))`` with ``g`` a monotone network (positive weights: a linear term plus a
    sigmoid layer), and the end points ``gamma_0``, ``gamma_1`` learned too."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, hidden: int = 1024) -> None:
        super().__init__()
        if not gamma_min < gamma_max:
            raise ValueError(f"LearnedLogSNR needs gamma_min < gamma_max, got {gamma_min}, {gamma_max}")
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_min)))
        self.gamma_1 = nn.Parameter(torch.tensor(float(gamma_max)))
        self.w1, self.b1 = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))
        self.w2, self.b2 = nn.Parameter(torch.randn(hidden, 1) * 0.1), nn.Parameter(torch.zeros(hidden))
        self.w3 = nn.Parameter(torch.randn(1, hidden) * 0.01)

    def _g(self, t: Tensor) -> Tensor:
        """Monotone increasing in ``t``: non-negative weights (softplus) on increasing functions."""
        softplus = nn.functional.softplus
        l1 = softplus(self.w1) * t[..., None] + self.b1
        l2 = torch.sigmoid(l1 @ softplus(self.w2).T + self.b2)
        return (l1 + l2 @ softplus(self.w3).T)[..., 0]

    def log_snr(self, t: Tensor) -> Tensor:
        dtype = self.gamma_0.dtype  # the samplers ask in float64; the network runs in its own dtype
        ends = self._g(torch.tensor([0.0, 1.0], dtype=dtype, device=t.device))
        frac = (self._g(t.to(dtype)) - ends[0]) / (ends[1] - ends[0])
        return (-(self.gamma_0 + (self.gamma_1 - self.gamma_0) * frac)).to(t.dtype)
