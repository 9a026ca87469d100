"""What a diffusion backbone predicts, and the conversions between predictions (one place for all of them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from decoders.diffusion.schedules import Schedule

Prediction = Literal["eps", "v", "x0"]
PREDICTIONS = get_args(Prediction)

# A denoiser maps a noisy ``x_t [B, ...]`` at times ``t [B]`` to a clean estimate ``x0_hat [B, ...]``.
Denoiser = Callable[[Tensor, Tensor], Tensor]


def check_prediction(prediction: str) -> Prediction:
    """``prediction`` itself, or a one-line ``ValueError`` naming the choices (checked at start-up)."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    return prediction  # type: ignore[return-value]


def expand(coef: Tensor, like: Tensor) -> Tensor:
    """``[B]`` coefficients reshaped to broadcast against ``like [B, ...]``."""
    return coef.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def target(prediction: Prediction, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The regression target of the backbone: ``eps``, ``v = alpha eps - sigma x0`` (Salimans & Ho 2022) or ``x0``."""
    if prediction == "eps":
        return eps
    if prediction == "v":
        return expand(alpha, x0) * eps - expand(sigma, x0) * x0
    return x0


def to_x0(prediction: Prediction, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The clean estimate implied by the backbone output ``out`` (variance-preserving: ``alpha^2 + sigma^2 = 1``)."""
    a, s = expand(alpha, x_t), expand(sigma, x_t)
    if prediction == "eps":
        return (x_t - s * out) / a
    if prediction == "v":
        return a * x_t - s * out
    return out


def to_eps(prediction: Prediction, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The noise estimate implied by ``out`` (for score-based losses: ``score = -eps_hat / sigma``); the ``v`` form
    ``eps = sigma x_t + alpha v`` stays well conditioned as ``sigma -> 0``."""
    a, s = expand(alpha, x_t), expand(sigma, x_t)
    if prediction == "eps":
        return out
    if prediction == "v":
        return s * x_t + a * out
    return (x_t - a * out) / s


def make_denoiser(
    net: nn.Module,
    schedule: Schedule,
    prediction: Prediction,
    cond: Tensor | None = None,
    clip: tuple[Tensor | float, Tensor | float] | None = None,
) -> Denoiser:
    """Wrap ``net(x_t, t, cond)`` into a :data:`Denoiser`; ``clip=(low, high)`` clamps ``x0_hat`` to a data range
    (the guard against blow-up of ``x0 = (x_t - sigma eps) / alpha`` at high noise)."""

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = schedule.alpha_sigma(t)
        x0 = to_x0(prediction, net(x_t, t, cond), x_t, alpha, sigma)
        if clip is not None:
            x0 = torch.maximum(torch.minimum(x0, torch.as_tensor(clip[1], dtype=x0.dtype)), torch.as_tensor(clip[0], dtype=x0.dtype))
        return x0

    return denoise
