"""MT-Diffusion's forward aggregation (Chen et al. 2024 §2.2, Theorem 2).

A discrete chain over the main modality's diffusion variable ``z`` that adds the other modalities' encodings
``E_i(x_i)`` at every step:

    q(z_t | z_{t-1}, X) = N(sqrt(a_t) (z_{t-1} + sum_i w_t^(i) E_i(x_i)), (1 - a_t) I)                (eq. 3)
    q(z_t | z_0, X)     = N(sqrt(abar_t) z_0 + sum_i atilde_t^(i) E_i(x_i), (1 - abar_t) I)            (eq. 4)
    atilde_t = sqrt(a_t) (w_t + atilde_{t-1}),  atilde_0 = 0

With ``c_t = sum_i atilde_t^(i) E_i``, ``y_t = z_t - c_t`` follows DDPM's chain ``y_t = sqrt(a_t) y_{t-1} +
noise`` (because ``c_t = sqrt(a_t) (c_{t-1} + sum_i w_t^(i) E_i)``), so the posterior of eq. 5 is DDPM's posterior
on ``y`` shifted by ``c_{t-1}``, and DDIM's step on ``y`` is a fast deterministic sampler that respects the
aggregation: :class:`AggregatedForward` only supplies the offset ``c_t`` and the library's samplers do the rest.

The per-step ``a_t`` are the ratios ``abar_t / abar_{t-1}`` of the process's schedule on the grid ``t = i / T``, so
``prod a_t = abar_t`` exactly and the continuous-time losses and samplers see the same marginals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from decoders.diffusion.forward import ForwardProcess
from decoders.diffusion.parameterization import expand
from decoders.diffusion.schedules import Schedule


class WeightSchedule:
    """``w_t`` for ``t = 1..T`` (MT-Diffusion's per-modality aggregation weight), as a float64 table ``[T + 1]`` with
    ``w_0 = 0``. Subclasses implement :meth:`values`."""

    def values(self, timesteps: int, alpha_bar: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        """``w_1 .. w_T`` as a float64 tensor ``[T]``; every value finite. ``alpha_bar`` is the process's ``abar_t`` on the
        grid ``t = 0 .. T`` (``abar_0 = 1``), for schedules defined relative to the noise."""
        raise NotImplementedError

    def table(self, timesteps: int, alpha_bar: Tensor | None = None) -> Tensor:
        w = self.values(timesteps, alpha_bar).double()
        if w.shape != (timesteps,) or not torch.isfinite(w).all():
            raise ValueError(f"{type(self).__name__} must give {timesteps} finite weights, got shape {list(w.shape)}")
        return torch.cat([torch.zeros(1, dtype=torch.float64), w])


class ConstantWeight(WeightSchedule):
    """``w_t = value`` at every step."""

    def __init__(self, value: float = 0.01) -> None:
        self.value = value

    def values(self, timesteps: int, alpha_bar: Tensor | None = None) -> Tensor:
        return torch.full((timesteps,), float(self.value), dtype=torch.float64)


class PaperWeight(WeightSchedule):
    """Chen et al. 2024 App. E: ``w_t = scale * t / (T - t)``, small at small ``t`` (where heterogeneous tasks could hurt
    image quality) and growing with ``t``. It diverges at ``t = T``; the end point is taken deliberately as
    ``w_T = w_{T-1} = scale * (T - 1)``, the largest finite value of the formula, so every weight is finite and the
    schedule stays non-decreasing. ``scale = 1`` is the paper's weight."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def values(self, timesteps: int, alpha_bar: Tensor | None = None) -> Tensor:
        t = torch.arange(1, timesteps + 1, dtype=torch.float64)
        t[-1] = max(timesteps - 1, 1)  # the end point: w_T = w_{T-1}, the formula's largest finite value
        return self.scale * t / (timesteps - t).clamp_min(1.0)


class TabulatedWeight(WeightSchedule):
    """User-supplied weights ``w_1 .. w_T`` (a list of ``T`` numbers)."""

    def __init__(self, values: Sequence[float]) -> None:
        self.weights = torch.tensor(list(values), dtype=torch.float64)

    def values(self, timesteps: int, alpha_bar: Tensor | None = None) -> Tensor:
        if self.weights.numel() != timesteps:
            raise ValueError(f"TabulatedWeight has {self.weights.numel()} weights, the process {timesteps} steps")
        return self.weights


class NoiseRatioWeight(WeightSchedule):
    """The weights defined by the offset-to-noise ratio ``atilde_t / sigma_t = kappa * sigma_t^power`` (``sigma_t^2 =
    1 - abar_t``): ``atilde_t = kappa * sigma_t^(1 + power)``, i.e. ``w_t = atilde_t / sqrt(a_t) - atilde_{t-1}``
    (non-negative: ``atilde`` grows with ``t`` and ``a_t < 1``).

    ``power = 0`` keeps the ratio at ``kappa`` at every ``t``; ``power = 1`` lets it grow with the noise, from 0 on
    clean data to ``kappa`` at ``t = T``, so nearly clean inputs carry no trace of the modality (a head reading them
    must read the image). Under the paper's ``w_t = scale * t / (T - t)`` the ratio is a small fraction until ``t`` nears
    ``T``, far past the noise levels where an image's content is decided."""

    def __init__(self, kappa: float = 1.0, power: float = 0.0) -> None:
        if kappa < 0 or power < 0:
            raise ValueError(f"NoiseRatioWeight needs kappa >= 0 and power >= 0, got {kappa} and {power}")
        self.kappa, self.power = kappa, power

    def values(self, timesteps: int, alpha_bar: Tensor | None = None) -> Tensor:
        if alpha_bar is None or alpha_bar.numel() != timesteps + 1:
            raise ValueError(f"NoiseRatioWeight needs the process's abar_t at the {timesteps + 1} grid points t = 0 .. {timesteps}")
        alpha_bar = alpha_bar.double()
        atilde = self.kappa * (1 - alpha_bar).clamp_min(0).sqrt() ** (1 + self.power)
        a = alpha_bar[1:] / alpha_bar[:-1]
        return (atilde[1:] / a.sqrt() - atilde[:-1]).clamp_min(0)


class AggregatedForward(ForwardProcess):
    """The forward process of eq. 3-4 on the grid ``t = i / timesteps``, one :class:`WeightSchedule` per aggregated
    modality. Its forward condition is ``{modality: E_i(x_i) [B, ...]}`` (missing modalities may be left out, or
    zero: they add nothing)."""

    has_offset = True

    def __init__(self, schedule: Schedule, timesteps: int, weights: Mapping[str, WeightSchedule]) -> None:
        super().__init__(schedule)
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        self.timesteps = timesteps
        grid = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        alpha_bar = schedule.alpha_sigma(grid)[0].double() ** 2
        alpha_bar[0] = 1.0
        a = torch.ones_like(alpha_bar)
        a[1:] = alpha_bar[1:] / alpha_bar[:-1]  # per-step a_t, so that prod a_t = abar_t
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("alpha_bar", alpha_bar, persistent=False)
        self.names = tuple(weights)
        tables = torch.stack([w.table(timesteps, alpha_bar) for w in weights.values()]) if weights else torch.zeros(0, timesteps + 1, dtype=torch.float64)
        self.register_buffer("w", tables, persistent=False)
        self.register_buffer("atilde", aggregated_coefficients(a, tables), persistent=False)

    def index(self, t: Tensor) -> Tensor:
        """Grid index ``round(t T)`` of times ``t``."""
        return torch.round(t.double() * self.timesteps).long().clamp(0, self.timesteps)

    def offset(self, t: Tensor, cond: Any) -> Tensor | None:
        """``c_t = sum_i atilde_t^(i) E_i(x_i)`` (eq. 4)."""
        if not cond:
            return None
        i = self.index(t).to(self.atilde.device)
        out = None
        for k, name in enumerate(self.names):
            if name in cond and cond[name] is not None:
                e = cond[name]
                term = expand(self.atilde[k, i].to(device=e.device, dtype=e.dtype), e) * e
                out = term if out is None else out + term
        return out

    def step_mean(self, z_prev: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        """``E[z_t | z_{t-1}, X] = sqrt(a_t) (z_{t-1} + sum_i w_t^(i) E_i)`` (eq. 3), for the tests' forward chain."""
        i = self.index(t).to(self.a.device)
        shift = torch.zeros_like(z_prev)
        for k, name in enumerate(self.names):
            if name in cond:
                shift = shift + expand(self.w[k, i].to(z_prev.dtype), z_prev) * cond[name]
        return expand(self.a[i].sqrt().to(z_prev.dtype), z_prev) * (z_prev + shift)

    def posterior(self, z_t: Tensor, z_0: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``q(z_{t-1} | z_t, z_0, X) = N(mean, var)`` (eq. 5, first form): DDPM's posterior on ``y = z - c``."""
        i = self.index(t).to(self.a.device)
        a, ab, ab_prev = (expand(v.to(z_t.dtype), z_t) for v in (self.a[i], self.alpha_bar[i], self.alpha_bar[i - 1]))
        c_t = self.offset(t, cond)
        c_prev = self.offset(t - 1.0 / self.timesteps, cond)
        y_t = z_t - (0 if c_t is None else c_t)
        mean = (ab_prev.sqrt() * (1 - a) / (1 - ab)) * z_0 + (a.sqrt() * (1 - ab_prev) / (1 - ab)) * y_t
        return mean + (0 if c_prev is None else c_prev), (1 - a) * (1 - ab_prev) / (1 - ab)

    def posterior_from_eps(self, z_t: Tensor, eps: Tensor, t: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        """eq. 5, second form: ``1/sqrt(a_t) (z_t - (1 - a_t)/sqrt(1 - abar_t) eps) - sum_i w_t^(i) E_i``."""
        i = self.index(t).to(self.a.device)
        a, ab = (expand(v.to(z_t.dtype), z_t) for v in (self.a[i], self.alpha_bar[i]))
        mean = (z_t - (1 - a) / (1 - ab).sqrt() * eps) / a.sqrt()
        for k, name in enumerate(self.names):
            if name in cond:
                mean = mean - expand(self.w[k, i].to(z_t.dtype), z_t) * cond[name]
        return mean


def aggregated_coefficients(a: Tensor, w: Tensor) -> Tensor:
    """``atilde_t = sqrt(a_t) (w_t + atilde_{t-1})``, ``atilde_0 = 0``, for each row of ``w [K, T + 1]``."""
    out = torch.zeros_like(w)
    for t in range(1, w.shape[1]):
        out[:, t] = a[t].sqrt() * (w[:, t] + out[:, t - 1])
    return out

