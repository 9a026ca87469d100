"""Diffusion losses as callables ``loss(net, x, cond, generator=...) -> [B]`` (unreduced, per example)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from decoders.diffusion.parameterization import Prediction, check_prediction, expand, target, to_eps
from decoders.diffusion.samplers import randn
from decoders.diffusion.schedules import Schedule


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device and moved to ``x``'s."""
    return randn(tuple(x.shape), generator, x.device, x.dtype)


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


class VDMLoss:
    """The variational diffusion loss of Kingma et al. 2021 (seed 002) for data scaled to ``[-1, 1]``, per example
    in nats: ``diffusion + prior`` (the reconstruction term is the decoder's, it knows the pixel grid).

    * ``timesteps = T``: the discrete-time diffusion term, seed 002 eq. 13 in eps form,
      ``L_T = T/2 E_i[expm1(gamma(t) - gamma(s)) ||eps - eps_hat(z_t; t)||^2]``, ``s = (i-1)/T``, ``t = i/T``.
    * ``timesteps = None``: the continuous limit, ``L_inf = 1/2 E_t[gamma'(t) ||eps - eps_hat||^2]``
      (eq. 17 / App. D), ``gamma'`` by autograd so a learned schedule works unchanged.
    * prior ``L_1 = KL(q(z_1|x) || N(0, I))``.

    The backbone predicts eps.
    """

    def __init__(self, schedule: Schedule, *, timesteps: int | None = None) -> None:
        if timesteps is not None and timesteps < 1:
            raise ValueError(f"timesteps must be >= 1 or None, got {timesteps}")
        self.schedule, self.timesteps = schedule, timesteps

    def gamma(self, t: Tensor) -> Tensor:
        return -self.schedule.log_snr(t)

    def diffusion_term(self, net: nn.Module, x: Tensor, eps: Tensor, t: Tensor, cond=None) -> Tensor:
        """The diffusion loss of each example at its own time ``t [B]`` (so tests can integrate it exactly)."""
        dims = tuple(range(1, x.dim()))
        if self.timesteps is None:
            training = torch.is_grad_enabled()
            with torch.enable_grad():  # gamma'(t) by autograd, also under evaluation's no_grad
                t = t.detach().requires_grad_(True)
                gamma_t = self.gamma(t)
                (dgamma,) = torch.autograd.grad(gamma_t.sum(), t, create_graph=training)
            if not training:
                gamma_t, dgamma = gamma_t.detach(), dgamma.detach()
        else:
            gamma_t = self.gamma(t)
            gamma_s = self.gamma(t - 1.0 / self.timesteps)
        alpha, sigma = torch.sigmoid(-gamma_t).sqrt(), torch.sigmoid(gamma_t).sqrt()
        x_t = expand(alpha, x) * x + expand(sigma, x) * eps
        err = (eps - net(x_t, t, cond)).pow(2).sum(dim=dims)
        if self.timesteps is None:
            return 0.5 * dgamma * err
        return 0.5 * self.timesteps * torch.expm1(gamma_t - gamma_s) * err

    def prior_term(self, x: Tensor) -> Tensor:
        """``KL(q(z_1|x) || N(0, I))`` summed over dimensions ``[B]``."""
        gamma_1 = self.gamma(torch.ones(1, device=x.device, dtype=x.dtype))
        alpha2, sigma2 = torch.sigmoid(-gamma_1), torch.sigmoid(gamma_1)
        return 0.5 * (alpha2 * x.pow(2) + sigma2 - torch.log(sigma2) - 1.0).flatten(1).sum(dim=1)

    def __call__(self, net: nn.Module, x: Tensor, cond=None, *, generator: torch.Generator | None = None) -> Tensor:
        u = rand(x.shape[0], generator, x)
        t = 1.0 - u if self.timesteps is None else (torch.floor(u * self.timesteps) + 1) / self.timesteps
        return self.diffusion_term(net, x, randn_like(x, generator), t, cond) + self.prior_term(x)


class DSMLoss:
    """Denoising score matching for the VP-SDE (Song et al. 2021; seed 003's Diff-MVAE decoders):
    ``E_t lambda(t)/2 ||grad log p_t(x_t|x) - s_theta(x_t, t)||^2`` with ``t ~ U(eps_t, 1]``.

    The backbone predicts ``prediction`` (eps by default; v or x0 are reparameterisations of the same score
    model), converted to ``eps_hat``; the score is ``s = -eps_hat / sigma_t``, so the per-example loss is
    ``lambda(t) / (2 sigma_t^2) ||eps - eps_hat||^2``. ``weighting``: ``variance`` (``lambda = sigma_t^2``,
    Song et al.'s default, = the simple eps loss / 2), ``likelihood`` (``lambda = beta(t)``, a bound on the
    NLL up to constants) or ``none`` (``lambda = 1``).
    """

    WEIGHTINGS = ("variance", "likelihood", "none")

    def __init__(self, schedule: Schedule, *, weighting: str = "variance", t_min: float = 1e-5, prediction: Prediction = "eps") -> None:
        self.prediction = check_prediction(prediction)
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"unknown DSM weighting {weighting!r}; choose one of {', '.join(self.WEIGHTINGS)}")
        if weighting == "likelihood" and not hasattr(schedule, "beta"):
            raise ValueError("the likelihood weighting needs a VP schedule with beta(t)")
        self.schedule, self.weighting, self.t_min = schedule, weighting, t_min

    def __call__(self, net: nn.Module, x: Tensor, cond=None, *, generator: torch.Generator | None = None) -> Tensor:
        t = self.t_min + (1.0 - self.t_min) * (1.0 - rand(x.shape[0], generator, x))
        eps = randn_like(x, generator)
        alpha, sigma = self.schedule.alpha_sigma(t)
        x_t = expand(alpha, x) * x + expand(sigma, x) * eps
        err = (eps - to_eps(self.prediction, net(x_t, t, cond), x_t, alpha, sigma)).pow(2).flatten(1).sum(dim=1)
        if self.weighting == "variance":
            weight = torch.full_like(t, 0.5)
        elif self.weighting == "likelihood":
            weight = 0.5 * self.schedule.beta(t) / sigma**2
        else:
            weight = 0.5 / sigma**2
        return weight * err
