"""Samplers: stateless free functions of a :data:`~decoders.diffusion.parameterization.Denoiser`."""

from __future__ import annotations

import torch
from torch import Tensor

from decoders.diffusion.parameterization import Denoiser, expand
from decoders.diffusion.schedules import Schedule, VPSchedule


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Noise drawn on the generator's device (so a CPU generator gives the same draws everywhere), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def time_grid(steps: int, timesteps: int | None, device: torch.device | str) -> Tensor:
    """``steps + 1`` decreasing times from 1 to 0; on the training grid ``i / T`` when ``timesteps = T``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)
    if timesteps is not None:
        t = torch.round(t * timesteps) / timesteps
    return t


def ddim_sample(
    denoise: Denoiser,
    shape: tuple[int, ...],
    *,
    schedule: Schedule,
    steps: int = 50,
    eta: float = 0.0,
    timesteps: int | None = 1000,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) from ``x_1 ~ N(0, I)`` to ``x_0`` in ``steps`` steps; ``eta = 1`` is
    DDPM's ancestral sampler, ``eta = 0`` deterministic. State is kept in float64. Returns ``shape``, float32."""
    t_grid = time_grid(steps, timesteps, device)
    x = randn(shape, generator, device).double()
    for t, s in zip(t_grid[:-1], t_grid[1:]):
        t_b = t.expand(shape[0])
        alpha_t, sigma_t = (v.double() for v in schedule.alpha_sigma(t_b))
        x0 = denoise(x.float(), t_b.float()).double()
        if s <= 0:
            return x0.float()
        # Implied noise, then the step to s (eq. 12).
        eps = (x - expand(alpha_t, x) * x0) / expand(sigma_t, x)
        alpha_s, sigma_s = (v.double() for v in schedule.alpha_sigma(s.expand(shape[0])))
        std = eta * (sigma_s / sigma_t) * (1 - (alpha_t / alpha_s) ** 2).clamp_min(0).sqrt()
        x = expand(alpha_s, x) * x0 + expand((sigma_s**2 - std**2).clamp_min(0).sqrt(), x) * eps
        if eta > 0:
            x = x + expand(std, x) * randn(shape, generator, device).double()
    return x.float()


def ancestral_sample(
    denoise: Denoiser,
    shape: tuple[int, ...],
    *,
    schedule: Schedule,
    steps: int = 1000,
    timesteps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """VDM's ancestral sampler (seed 002 App. A.4): ``z_s ~ q(z_s | z_t, x = x0_hat)`` from ``t = 1`` to 0, which
    is :func:`ddim_sample` with ``eta = 1``."""
    return ddim_sample(denoise, shape, schedule=schedule, steps=steps, eta=1.0, timesteps=timesteps, generator=generator, device=device)


def euler_maruyama_sample(
    denoise: Denoiser,
    shape: tuple[int, ...],
    *,
    schedule: VPSchedule,
    steps: int = 1000,
    t_min: float = 1e-3,
    corrector_steps: int = 0,
    snr: float = 0.16,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Reverse VP-SDE ``dx = [-beta/2 x - beta score] dt + sqrt(beta) dw_bar`` by Euler-Maruyama (Song et al.
    2021, predictor), from ``t = 1`` to ``t_min``, with ``corrector_steps`` Langevin corrector steps at signal-to-
    noise ``snr`` after each (the PC sampler). Returns the denoised ``x0_hat`` at ``t_min``, float32."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t_grid = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64, device=device)
    x = randn(shape, generator, device).double()

    def score(x: Tensor, t_b: Tensor) -> Tensor:
        alpha, sigma = (v.double() for v in schedule.alpha_sigma(t_b))
        x0 = denoise(x.float(), t_b.float()).double()
        return -(x - expand(alpha, x) * x0) / expand(sigma, x) ** 2

    for t, s in zip(t_grid[:-1], t_grid[1:]):
        t_b, dt = t.expand(shape[0]), (t - s).item()
        beta = expand(schedule.beta(t_b.double()), x)
        # Euler-Maruyama predictor step (backwards in time).
        x = x + (0.5 * beta * x + beta * score(x, t_b)) * dt + (beta * dt).sqrt() * randn(shape, generator, device).double()
        s_b = s.expand(shape[0])
        for _ in range(corrector_steps):
            # Langevin corrector step at time s.
            grad = score(x, s_b)
            noise = randn(shape, generator, device).double()
            step = 2 * (snr * noise.flatten(1).norm(dim=1) / grad.flatten(1).norm(dim=1).clamp_min(1e-12)) ** 2
            x = x + expand(step, x) * grad + expand((2 * step).sqrt(), x) * noise
    return denoise(x.float(), t_grid[-1].expand(shape[0]).float())
