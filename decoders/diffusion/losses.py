"""Diffusion losses as callables ``loss(net, x, cond, *, marginal=None, generator=None) -> [B]``: unreduced, one
value per example, **summed** over the data dimensions (the scale of a log-likelihood, which is what the ELBO
adds them to; switching the process does not rescale the term by ``C x H x W``).

``x_t`` is drawn through the forward process (:class:`~decoders.diffusion.forward.Marginal`, the process's own
with no offset unless ``marginal`` is given), so a process with another forward marginal reuses these losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from decoders.diffusion.forward import ForwardProcess, Marginal
from decoders.diffusion.parameterization import Backbone, Prediction, check_prediction, target, to_eps
from decoders.random import rand, randn


def sum_event(t: Tensor) -> Tensor:
    """Sum over every non-batch dimension: ``[B, ...] -> [B]``."""
    return t.flatten(1).sum(dim=1)


def training_times(n: int, timesteps: int | None, generator: torch.Generator | None, like: Tensor, t_min: float = 0.0) -> Tensor:
    """Training times ``[n]``: ``i / T`` with ``i ~ U{1..T}`` when ``timesteps = T``, else ``U(t_min, 1]``."""
    u = rand((n,), generator, like.device, like.dtype)
    if timesteps is None:
        return t_min + (1.0 - t_min) * (1.0 - u)
    return (torch.floor(u * timesteps) + 1) / timesteps


def clean_error_weight(prediction: Prediction, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The weight the squared error of ``prediction`` puts on the clean image's squared error at each time:
    ``SNR`` for eps, ``1 + SNR`` for v (``alpha^2 + sigma^2 = 1``), ``1`` for x0."""
    snr = (alpha / sigma).pow(2)
    return snr if prediction == "eps" else snr + 1 if prediction == "v" else torch.ones_like(snr)


class DDPMLoss:
    """DDPM's simple loss (Ho et al. 2020 eq. 14), ``||target - net(x_t, t, cond)||^2`` summed over the data
    dimensions, with ``t = i / T``, ``i ~ U{1..T}`` (``timesteps = T``), or ``t ~ U(0, 1]`` when ``None``.
    ``prediction`` picks the target: ``eps``, ``v`` or ``x0``.

    ``max_weight`` (``None``: off) caps the weight the loss puts on the clean image's squared error, ``SNR`` for
    eps and ``1 + SNR`` for v (:func:`clean_error_weight`), at ``max_weight``: each example's loss is scaled by
    ``min(1, max_weight / weight(t))``. For eps this is the Min-SNR-gamma weighting of Hang et al. 2023, "Efficient
    Diffusion Training via Min-SNR Weighting Strategy"; for v it caps ``1 + SNR`` and so keeps v's weight at the
    noisy end. The least noisy times, whose errors are mostly the noise the network cannot predict, then no longer
    dominate the gradient; the weighting stays monotone in the log-SNR (an ELBO under noise augmentation, Kingma &
    Gao 2023)."""

    def __init__(self, forward: ForwardProcess, *, timesteps: int | None = 1000, prediction: Prediction = "eps",
                 max_weight: float | None = None) -> None:
        if timesteps is not None and timesteps < 1:
            raise ValueError(f"timesteps must be >= 1 or None, got {timesteps}")
        if max_weight is not None and not max_weight > 0:
            raise ValueError(f"max_weight must be > 0 or None, got {max_weight}")
        self.forward, self.timesteps, self.prediction = forward, timesteps, check_prediction(prediction)
        self.max_weight = max_weight

    def sample_t(self, n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """Training times ``[n]`` in ``(0, 1]``."""
        return training_times(n, self.timesteps, generator, like)

    def __call__(self, net: Backbone, x: Tensor, cond=None, *, marginal: Marginal | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        return self.with_extras(lambda x_t, t, c: (net(x_t, t, c), None), x, cond, marginal=marginal, generator=generator)[0]

    def with_extras(self, net: Callable[[Tensor, Tensor, Any], tuple[Tensor, Any]], x: Tensor, cond=None, *,
                    marginal: Marginal | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Any]:
        """The loss of a backbone that returns ``(prediction, extras)`` (a shared network with heads, MT-Diffusion's),
        and its extras at the same ``x_t``."""
        marginal = marginal if marginal is not None else self.forward.given()
        t = self.sample_t(x.shape[0], generator, x)
        eps = randn(tuple(x.shape), generator, x.device, x.dtype)
        alpha, sigma = marginal.alpha_sigma(t)
        out, extras = net(marginal.sample(x, t, eps), t, cond)
        loss = sum_event((out - target(self.prediction, x, eps, alpha, sigma)).pow(2))
        if self.max_weight is not None:
            loss = loss * (self.max_weight / clean_error_weight(self.prediction, alpha, sigma)).clamp(max=1.0)
        return loss, extras


class VDMLoss:
    """The variational diffusion loss of Kingma et al. 2021 in nats per example: ``diffusion + prior``
    (the reconstruction term is the process's, it knows the pixel grid). The backbone predicts eps.

    * ``timesteps = T``: the discrete-time diffusion term, Kingma et al. 2021 eq. 13 in eps form,
      ``L_T = T/2 E_i[expm1(gamma(t) - gamma(s)) ||eps - eps_hat(z_t; t)||^2]``, ``s = (i-1)/T``, ``t = i/T``.
    * ``timesteps = None``: the continuous limit, ``L_inf = 1/2 E_t[gamma'(t) ||eps - eps_hat||^2]``
      (eq. 17 / App. D), ``gamma'`` by autograd so a learned schedule works unchanged.
    * prior ``L_1 = KL(q(z_1|x) || N(E[z_1 | anchor], I))``: the model's prior at ``t = 1`` is centred on the
      anchor's forward mean (0 without one).
    """

    def __init__(self, forward: ForwardProcess, *, timesteps: int | None = None) -> None:
        if timesteps is not None and timesteps < 1:
            raise ValueError(f"timesteps must be >= 1 or None, got {timesteps}")
        self.forward, self.timesteps = forward, timesteps

    def gamma(self, t: Tensor) -> Tensor:
        return -self.forward.schedule.log_snr(t)

    def diffusion_term(self, net: Backbone, x: Tensor, eps: Tensor, t: Tensor, cond=None, marginal: Marginal | None = None) -> Tensor:
        """The diffusion loss of each example at its own time ``t [B]`` (so tests can integrate it exactly)."""
        marginal = marginal if marginal is not None else self.forward.given()
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
        x_t = marginal.sample(x, t, eps)
        err = sum_event((eps - net(x_t, t, cond)).pow(2))
        if self.timesteps is None:
            return 0.5 * dgamma * err
        return 0.5 * self.timesteps * torch.expm1(gamma_t - gamma_s) * err

    def prior_term(self, x: Tensor, anchor: Tensor | None = None) -> Tensor:
        """``KL(N(alpha_1 x, sigma_1^2) || N(alpha_1 anchor, 1))`` summed over dimensions ``[B]``."""
        gamma_1 = self.gamma(torch.ones(1, device=x.device, dtype=x.dtype))
        alpha2, sigma2 = torch.sigmoid(-gamma_1), torch.sigmoid(gamma_1)
        diff = x if anchor is None else x - anchor
        return 0.5 * sum_event(alpha2 * diff.pow(2) + sigma2 - torch.log(sigma2) - 1.0)

    def sample_t(self, n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        return training_times(n, self.timesteps, generator, like)

    def __call__(self, net: Backbone, x: Tensor, cond=None, *, marginal: Marginal | None = None, anchor: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        t = self.sample_t(x.shape[0], generator, x)
        eps = randn(tuple(x.shape), generator, x.device, x.dtype)
        return self.diffusion_term(net, x, eps, t, cond, marginal) + self.prior_term(x, anchor)


class DSMLoss:
    """Denoising score matching for the VP-SDE (Song et al. 2021; Wesego & Rooshenas 2024 eq. 19, the Diff-MVAE decoders):
    ``E_t lambda(t)/2 ||grad log p_t(x_t|x) - s_theta(x_t, t)||^2`` with ``t ~ U(t_min, 1]``.

    The backbone predicts ``prediction`` (eps by default; v or x0 are reparameterisations of the same score
    model), converted to ``eps_hat``; the score is ``s = -eps_hat / sigma_t``, so the per-example loss is
    ``lambda(t) / (2 sigma_t^2) ||eps - eps_hat||^2``. ``weighting``: ``variance`` (``lambda = sigma_t^2``,
    Song et al.'s default, = the simple eps loss / 2), ``likelihood`` (``lambda = beta(t)``, a bound on the
    NLL up to constants), ``none`` (``lambda = 1``) or ``prediction`` (half the squared error in the space of the
    backbone's prediction, as the DDPM decoders' loss: ``lambda = sigma_t^2 / alpha_t^2`` for ``v``, since
    ``eps - eps_hat = alpha_t (v - v_hat)``; ``sigma_t^4 / alpha_t^2`` for ``x0``; ``variance`` for ``eps``).
    The ``variance`` weighting gives the high-noise times, where the image's layout is decided, a weight ``alpha_t^2``
    that vanishes at ``t = 1``; ``prediction`` with ``v`` weighs every time alike in ``v``.
    """

    WEIGHTINGS = ("variance", "likelihood", "none", "prediction")

    def __init__(self, forward: ForwardProcess, *, weighting: str = "variance", t_min: float = 1e-5, prediction: Prediction = "eps") -> None:
        self.prediction = check_prediction(prediction)
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"unknown DSM weighting {weighting!r}; choose one of {', '.join(self.WEIGHTINGS)}")
        if weighting == "likelihood" and not forward.schedule.has_beta:
            raise ValueError("the likelihood weighting needs a VP schedule with beta(t)")
        self.forward, self.weighting, self.t_min = forward, weighting, t_min

    def weight(self, t: Tensor) -> Tensor:
        """``lambda(t) / (2 sigma_t^2)``, the factor in front of ``||eps - eps_hat||^2``, ``[B]``."""
        if self.weighting == "variance" or (self.weighting == "prediction" and self.prediction == "eps"):
            return torch.full_like(t, 0.5)
        alpha, sigma = self.forward.alpha_sigma(t)
        if self.weighting == "prediction":
            return 0.5 / alpha**2 if self.prediction == "v" else 0.5 * sigma**2 / alpha**2
        if self.weighting == "likelihood":
            return 0.5 * self.forward.schedule.beta(t) / sigma**2
        return 0.5 / sigma**2

    def per_time(self, net: Backbone, x: Tensor, eps: Tensor, t: Tensor, cond=None, marginal: Marginal | None = None) -> Tensor:
        """The loss of each example at its own ``t [B]`` and noise ``eps`` (the expectation's integrand)."""
        marginal = marginal if marginal is not None else self.forward.given()
        alpha, sigma = marginal.alpha_sigma(t)
        x_t = marginal.sample(x, t, eps)
        eps_hat = to_eps(self.prediction, net(x_t, t, cond), marginal.remove_offset(x_t, t), alpha, sigma)
        return self.weight(t) * sum_event((eps - eps_hat).pow(2))

    def __call__(self, net: Backbone, x: Tensor, cond=None, *, marginal: Marginal | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        t = training_times(x.shape[0], None, generator, x, t_min=self.t_min)
        return self.per_time(net, x, randn(tuple(x.shape), generator, x.device, x.dtype), t, cond, marginal)


