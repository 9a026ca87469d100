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


def check_start(start: float) -> float:
    if not 0.0 < start <= 1.0:
        raise ValueError(f"start must be in (0, 1], got {start}")
    return start


def time_grid(steps: int, timesteps: int | None, device: torch.device | str, start: float = 1.0) -> Tensor:
    """Decreasing times from ``start`` to 0 on ``steps`` steps per unit of time (``round(steps * start)`` of them,
    at least one); on the training grid ``i / T`` when ``timesteps = T``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_start(start)
    n = max(1, round(steps * start))
    t = torch.linspace(start, 0.0, n + 1, dtype=torch.float64, device=device)
    if timesteps is not None:
        t = torch.round(t * timesteps) / timesteps
    return t


def initial_state(shape: tuple[int, ...], schedule: Schedule, start: Tensor, x_init: Tensor | None,
                  generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """``x_1 ~ N(0, I)``, or for ``start < 1`` the forward process applied to ``x_init`` (0 when ``None``):
    ``alpha_start x_init + sigma_start eps`` (SDEdit-style truncated sampling), float64."""
    eps = randn(shape, generator, device).double()
    if start >= 1:
        return eps
    alpha, sigma = (v.double() for v in schedule.alpha_sigma(start.expand(shape[0])))
    base = torch.zeros_like(eps) if x_init is None else x_init.to(device=eps.device, dtype=torch.float64).expand(shape)
    return expand(alpha, eps) * base + expand(sigma, eps) * eps


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
    start: float = 1.0,
    x_init: Tensor | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) from ``x_1 ~ N(0, I)`` to ``x_0`` in ``steps`` steps; ``eta = 1`` is
    DDPM's ancestral sampler, ``eta = 0`` deterministic. ``start < 1`` begins at that time from ``x_init``
    noised (:func:`initial_state`), with the same step size. State is kept in float64. Returns ``shape``, float32."""
    t_grid = time_grid(steps, timesteps, device, start)
    x = initial_state(shape, schedule, t_grid[0], x_init, generator, device)
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
    start: float = 1.0,
    x_init: Tensor | None = None,
) -> Tensor:
    """VDM's ancestral sampler (seed 002 App. A.4): ``z_s ~ q(z_s | z_t, x = x0_hat)`` from ``t = 1`` to 0, which
    is :func:`ddim_sample` with ``eta = 1``."""
    return ddim_sample(denoise, shape, schedule=schedule, steps=steps, eta=1.0, timesteps=timesteps, generator=generator, device=device,
                       start=start, x_init=x_init)


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
    start: float = 1.0,
    x_init: Tensor | None = None,
) -> Tensor:
    """Reverse VP-SDE ``dx = [-beta/2 x - beta score] dt + sqrt(beta) dw_bar`` by Euler-Maruyama (Song et al.
    2021, predictor), from ``t = 1`` (or ``start``, from ``x_init`` noised) to ``t_min``, with ``corrector_steps``
    Langevin corrector steps at signal-to-noise ``snr`` after each (the PC sampler). Returns the denoised
    ``x0_hat`` at ``t_min``, float32."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_start(start)
    n = max(1, round(steps * (start - t_min) / (1.0 - t_min)))
    t_grid = torch.linspace(start, t_min, n + 1, dtype=torch.float64, device=device)
    x = initial_state(shape, schedule, t_grid[0], x_init, generator, device)

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
