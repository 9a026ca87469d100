"""Samplers: small frozen dataclasses of settings, called as stateless functions of a denoiser.

    sampler(denoise, marginal, shape, *, timesteps=None, generator=None, device="cpu", start=1.0, anchor=None)

``denoise(x_t, t) -> x0_hat`` is the backbone wrapped by :func:`~decoders.diffusion.make_denoiser`; ``marginal``
is the forward process bound to the batch (:class:`~decoders.diffusion.forward.Marginal`), which says where
``x_t`` lies given ``x_0``. Every step is written through it, so the samplers are exact for any forward process
with an offset (``y_t = x_t - offset_t`` follows a plain VP chain, and the steps act on ``y``). State is kept in
float64; the denoiser sees and returns ``dtype``. A new sampler is one new subclass of :class:`Sampler`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor

from decoders.diffusion.forward import ForwardProcess, Marginal, expand
from decoders.diffusion.parameterization import Denoiser, Reestimating, as_step
from decoders.random import randn


def check_start(start: float) -> float:
    if not 0.0 < start <= 1.0:
        raise ValueError(f"start must be in (0, 1], got {start}")
    return start


def check_steps(steps: int) -> int:
    if steps < 1:
        raise ValueError(f"sampler steps must be >= 1, got {steps}")
    return steps


Grid = Literal["time", "logsnr"]
GRIDS: tuple[str, ...] = get_args(Grid)  # DPM-Solver++'s evaluation-time grids, its default first


def check_grid(grid: str, what: str = "grid") -> None:
    if grid not in GRIDS:
        raise ValueError(f"{what} must be {' or '.join(GRIDS)}, got {grid!r}")


def time_grid(steps: int, timesteps: int | None, device: torch.device | str, start: float = 1.0) -> Tensor:
    """Decreasing times from ``start`` to 0 on ``steps`` steps per unit of time (``round(steps * start)`` of them,
    at least one); on the training grid ``i / T`` when ``timesteps = T``."""
    check_steps(steps)
    check_start(start)
    n = max(1, round(steps * start))
    t = torch.linspace(start, 0.0, n + 1, dtype=torch.float64, device=device)
    if timesteps is not None:
        t = torch.round(t * timesteps) / timesteps
    return t


def logsnr_grid(schedule: Any, steps: int, timesteps: int | None, device: torch.device | str, start: float = 1.0,
                t_min: float | None = None) -> Tensor:
    """Decreasing times from ``start`` to 0: ``round(steps * start)`` evaluation times uniform in log-SNR from
    ``start`` down to ``t_min`` (default ``1 / T``, else 1e-3), then 0 (DPM-Solver's ``logSNR`` skip); on the
    training grid ``i / T`` when ``timesteps = T``. The times are found by bisection on the schedule's ``log_snr``."""
    check_steps(steps)
    check_start(start)
    n = max(1, round(steps * start))
    t_min = t_min if t_min is not None else (1.0 / timesteps if timesteps else 1e-3)
    with torch.no_grad():
        ends = schedule.log_snr(torch.tensor([start, t_min], dtype=torch.float64)).double()
        target = torch.linspace(float(ends[0]), float(ends[1]), n, dtype=torch.float64)
        low, high = torch.zeros_like(target), torch.full_like(target, start)
        for _ in range(60):  # log_snr decreases in t
            mid = (low + high) / 2
            later = schedule.log_snr(mid).double() < target
            low, high = torch.where(later, low, mid), torch.where(later, mid, high)
    t = torch.cat([torch.tensor([start], dtype=torch.float64), ((low + high) / 2)[1:], torch.zeros(1, dtype=torch.float64)])
    if timesteps is not None:
        t = torch.unique_consecutive(torch.round(t * timesteps)) / timesteps
    return t.to(device)


@dataclass(frozen=True)
class Sampler:
    """Base class. Subclasses are frozen dataclasses with a ``steps`` field, a ``name`` and :meth:`__call__`."""

    name: ClassVar[str] = "sampler"
    #: Whether the sampler has DDIM's ``eta`` (``SamplingSettings.eta`` applies to it).
    has_eta: ClassVar[bool] = False
    #: Whether the sampler has a choice of evaluation-time ``grid`` (``SamplingSettings.grid`` applies to it).
    has_grid: ClassVar[bool] = False
    steps: int = 50

    def __post_init__(self) -> None:
        check_steps(self.steps)

    def check(self, forward: ForwardProcess) -> None:
        """Raise ``ValueError`` (one line) when this sampler cannot sample the forward process ``forward``; checked
        before sampling."""

    def describe(self) -> dict[str, Any]:
        """The settings, for ``samples.npz`` and evaluation records: ``{"sampler": name, "steps": ..., ...}``."""
        return {"sampler": self.name, **asdict(self)}

    def __call__(self, denoise: Denoiser | Reestimating, marginal: Marginal, shape: tuple[int, ...], *, timesteps: int | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu", start: float = 1.0,
                 anchor: Tensor | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """A sample ``shape`` (the clean estimate at the last step), ``dtype``."""
        return self.run(denoise, marginal, shape, timesteps=timesteps, generator=generator, device=device, start=start, anchor=anchor,
                        dtype=dtype)[0]

    def run(self, denoise: Denoiser | Reestimating, marginal: Marginal, shape: tuple[int, ...], *, timesteps: int | None = None,
            generator: torch.Generator | None = None, device: torch.device | str = "cpu", start: float = 1.0,
            anchor: Tensor | None = None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Marginal]:  # pragma: no cover
        """The sample and the marginal the chain ended on (a :class:`Reestimating` denoiser's last estimate)."""
        raise NotImplementedError


def run_chain(update: Callable[[Tensor, Tensor, Tensor, Tensor, Marginal], Tensor], denoise: Denoiser | Reestimating, marginal: Marginal,
              shape: tuple[int, ...], t_grid: Tensor, *, generator: torch.Generator | None, device: torch.device | str,
              anchor: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Marginal]:
    """The chain DDIM-type samplers share: start at :meth:`Marginal.initial`, evaluate the denoiser at each time of
    ``t_grid`` (float64 state, the network in ``dtype``), and move ``x`` to the next time with
    ``update(x, x0, t, s, marginal)``; at ``s = 0`` the clean estimate is the sample. Returns it and the last marginal."""
    step = as_step(denoise)
    x = marginal.initial(shape, t_grid[0], anchor, generator, device)
    for t, s in zip(t_grid[:-1], t_grid[1:]):
        t_b, s_b = t.expand(shape[0]), s.expand(shape[0])
        x0, following = step(x.to(dtype), t_b.to(dtype), marginal)
        x0 = x0.double()
        if s <= 0:
            return x0.to(dtype), following
        # a re-estimating denoiser moved the chain to a new forward condition: continue from the same offset-free
        # point, in the new marginal's coordinates (the offset removed is the one x carries)
        x, marginal = following.rebase(x, t_b, marginal), following
        x = update(x, x0, t_b, s_b, marginal)
    return x.to(dtype), marginal


@dataclass(frozen=True)
class DDIM(Sampler):
    """DDIM (Song et al. 2021, eq. 12): ``eta = 0`` integrates the probability-flow ODE deterministically,
    ``eta = 1`` is DDPM's ancestral sampler. ``start < 1`` begins at that time from the anchor noised
    (:meth:`Marginal.initial`), with the same step size."""

    name: ClassVar[str] = "ddim"
    has_eta: ClassVar[bool] = True
    steps: int = 50
    eta: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")

    def run(self, denoise, marginal, shape, *, timesteps=None, generator=None, device="cpu", start=1.0, anchor=None, dtype=torch.float32):
        def update(x: Tensor, x0: Tensor, t_b: Tensor, s_b: Tensor, marginal: Marginal) -> Tensor:
            # Implied noise, then the step to s (eq. 12), in offset-free coordinates.
            eps = marginal.noise_of(x, x0, t_b)
            (alpha_t, sigma_t), (alpha_s, sigma_s) = marginal.alpha_sigma(t_b), marginal.alpha_sigma(s_b)
            std = self.eta * (sigma_s / sigma_t) * (1 - (alpha_t / alpha_s) ** 2).clamp_min(0).sqrt()
            x = marginal.mean(x0, s_b) + expand((sigma_s**2 - std**2).clamp_min(0).sqrt(), x) * eps
            if self.eta > 0:
                x = x + expand(std, x) * randn(shape, generator, device, torch.float64)
            return x

        return run_chain(update, denoise, marginal, shape, time_grid(self.steps, timesteps, device, start), generator=generator,
                         device=device, anchor=anchor, dtype=dtype)


@dataclass(frozen=True)
class Ancestral(Sampler):
    """The ancestral sampler (DDPM; Kingma et al. 2021 App. A.4): ``x_s ~ q(x_s | x_t, x_0 = x0_hat)``, which is
    :class:`DDIM` with ``eta = 1``."""

    name: ClassVar[str] = "ancestral"
    steps: int = 1000

    def run(self, denoise, marginal, shape, **kwargs):
        return DDIM(self.steps, eta=1.0).run(denoise, marginal, shape, **kwargs)


@dataclass(frozen=True)
class DPMSolverPP(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
    Models", Algorithm 2): a deterministic second-order multistep solver of the probability-flow ODE in data
    prediction, comparable to DDIM-50 in 10-20 network evaluations.

    With ``h = lambda_s - lambda_t`` (``lambda = log alpha / sigma``) and ``r = h_prev / h``, each step is DDIM's
    (first order, eta 0) with the clean estimate replaced by ``D = x0 + (x0 - x0_prev) / (2 r)``: in offset-free
    coordinates ``y_s = (sigma_s / sigma_t) y_t + alpha_s (1 - e^-h) D``, so it runs on any variance-preserving
    marginal, MT-Diffusion's shifted one included (there ``y = x - offset``). The first step and the last (to
    ``t = 0``) are first order, as the paper's ``lower_order_final``. ``grid``: evaluation times uniform in time
    (DDIM's, the default) or in log-SNR (:func:`logsnr_grid`). On PolyDigits the time grid matched DDIM-50's
    coherence at 15 evaluations where the log-SNR grid fell 2.5 points short at 20 (the benchmarks page)."""

    name: ClassVar[str] = "dpmpp_2m"
    has_grid: ClassVar[bool] = True
    steps: int = 20
    grid: Grid = "time"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_grid(self.grid, "dpmpp_2m grid")

    def run(self, denoise, marginal, shape, *, timesteps=None, generator=None, device="cpu", start=1.0, anchor=None, dtype=torch.float32):
        if self.grid == "logsnr":
            t_grid = logsnr_grid(marginal.process.schedule, self.steps, timesteps, device, start)
        else:
            t_grid = time_grid(self.steps, timesteps, device, start)
        previous: list[tuple[Tensor, Tensor]] = []  # (x0, h) of the step before

        def update(x: Tensor, x0: Tensor, t_b: Tensor, s_b: Tensor, marginal: Marginal) -> Tensor:
            (alpha_t, sigma_t), (alpha_s, sigma_s) = marginal.alpha_sigma(t_b), marginal.alpha_sigma(s_b)
            h = torch.log(alpha_s.double() / sigma_s.double()) - torch.log(alpha_t.double() / sigma_t.double())
            d = x0 if not previous else x0 + expand(h / (2 * previous[-1][1]), x0) * (x0 - previous[-1][0])
            previous.append((x0, h))
            return marginal.mean(d, s_b) + expand(sigma_s.double(), x) * marginal.noise_of(x, d, t_b)

        return run_chain(update, denoise, marginal, shape, t_grid, generator=generator, device=device, anchor=anchor, dtype=dtype)


def langevin_step(x: Tensor, score: Tensor, snr: float, generator: torch.Generator | None) -> Tensor:
    """One unadjusted Langevin step ``x + e score + sqrt(2 e) xi``, ``xi ~ N(0, I)``, with the per-example step
    ``e = 2 (snr ||xi|| / ||score||)^2`` (Song et al. 2021, Algorithm 5, the corrector of the PC sampler)."""
    noise = randn(tuple(x.shape), generator, x.device, x.dtype)
    step = 2 * (snr * noise.flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1).clamp_min(1e-12)) ** 2
    return x + expand(step, x) * score + expand((2 * step).sqrt(), x) * noise


@dataclass(frozen=True)
class EulerMaruyama(Sampler):
    """The reverse VP-SDE ``dx = [-beta/2 x - beta score] dt + sqrt(beta) dw_bar`` by Euler-Maruyama (Song et al.
    2021, the predictor), from ``start`` to ``t_min``, with ``corrector_steps`` Langevin steps at ``snr`` after each
    (the PC sampler); returns the clean estimate at ``t_min``. Needs a VP-SDE schedule with ``beta(t)`` and a
    forward process without offset."""

    name: ClassVar[str] = "euler_maruyama"
    steps: int = 1000
    corrector_steps: int = 0
    snr: float = 0.16
    t_min: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.corrector_steps < 0 or self.snr <= 0 or not 0 < self.t_min < 1:
            raise ValueError(f"euler_maruyama needs corrector_steps >= 0, snr > 0 and 0 < t_min < 1, got "
                             f"{self.corrector_steps}, {self.snr}, {self.t_min}")

    def check(self, forward: ForwardProcess) -> None:
        if not forward.schedule.has_beta or forward.has_offset:
            raise ValueError(f"sampler euler_maruyama needs the VP-SDE (a schedule with beta(t), no forward offset); "
                             f"{type(forward).__name__} has {type(forward.schedule).__name__}; use ddim or ancestral")

    def run(self, denoise, marginal, shape, *, timesteps=None, generator=None, device="cpu", start=1.0, anchor=None, dtype=torch.float32):
        check_start(start)
        step = as_step(denoise)  # the VP-SDE has no offset (see check): the marginal stays the same
        denoise = lambda x_t, t: step(x_t, t, marginal)[0]  # noqa: E731
        schedule = marginal.process.schedule
        n = max(1, round(self.steps * (start - self.t_min) / (1.0 - self.t_min)))
        t_grid = torch.linspace(start, self.t_min, n + 1, dtype=torch.float64, device=device)
        x = marginal.initial(shape, t_grid[0], anchor, generator, device)

        def score(x: Tensor, t_b: Tensor) -> Tensor:
            _, sigma = marginal.alpha_sigma(t_b)
            x0 = denoise(x.to(dtype), t_b.to(dtype)).double()
            return -(x - marginal.mean(x0, t_b)) / expand(sigma, x) ** 2

        for t, s in zip(t_grid[:-1], t_grid[1:]):
            t_b, dt = t.expand(shape[0]), (t - s).item()
            beta = expand(schedule.beta(t_b), x)
            # Euler-Maruyama predictor step (backwards in time).
            x = x + (0.5 * beta * x + beta * score(x, t_b)) * dt + (beta * dt).sqrt() * randn(shape, generator, device, torch.float64)
            for _ in range(self.corrector_steps):
                # Langevin corrector step at time s.
                x = langevin_step(x, score(x, s.expand(shape[0])), self.snr, generator)
        return denoise(x.to(dtype), t_grid[-1].expand(shape[0]).to(dtype)), marginal


# The samplers the command line names (``--sampler NAME``); a sampler of your own is passed as an object.
SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (DDIM, Ancestral, DPMSolverPP, EulerMaruyama)}
