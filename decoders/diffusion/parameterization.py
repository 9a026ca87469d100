"""What a diffusion backbone predicts, and the conversions between predictions (one place for all of them).

All conversions are written in offset-free coordinates ``y_t = alpha_t x_0 + sigma_t eps`` (for a forward process
with an offset, ``y_t = x_t - offset_t``; see :meth:`decoders.diffusion.forward.Marginal.remove_offset`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from decoders.diffusion.forward import Marginal, expand

Prediction = Literal["eps", "v", "x0"]
PREDICTIONS = get_args(Prediction)

# A denoiser maps a noisy ``x_t [B, ...]`` at times ``t [B]`` to a clean estimate ``x0_hat [B, ...]``.
Denoiser = Callable[[Tensor, Tensor], Tensor]
# A backbone: ``net(x_t, t, cond) -> output [B, ...]`` (eps, v or x0, as the process says).
Backbone = Callable[[Tensor, Tensor, Any], Tensor]
# One step of a sampler's chain: ``(x_t, t, marginal) -> (x0_hat, the marginal the chain continues on)``.
Step = Callable[[Tensor, Tensor, Marginal], tuple[Tensor, Marginal]]


class Reestimating:
    """A denoiser that re-estimates the forward condition along the chain (MT-Diffusion's Algorithm 1): :meth:`step`
    takes the marginal the chain is on and returns the clean estimate and the marginal the next step runs on, a new
    value (nothing is changed in place), so the samplers carry the state and return the last marginal."""

    def step(self, x_t: Tensor, t: Tensor, marginal: Marginal) -> tuple[Tensor, Marginal]:  # pragma: no cover - abstract
        raise NotImplementedError


def as_step(denoise: Denoiser | Reestimating) -> Step:
    """The chain step of a denoiser: a plain one keeps the marginal; a :class:`Reestimating` one gives the next."""
    if isinstance(denoise, Reestimating):
        return denoise.step
    return lambda x_t, t, marginal: (denoise(x_t, t), marginal)


def check_prediction(prediction: str) -> Prediction:
    """``prediction`` itself, or a one-line ``ValueError`` naming the choices (checked at start-up)."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    return prediction  # type: ignore[return-value]


def target(prediction: Prediction, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The regression target of the backbone: ``eps``, ``v = alpha eps - sigma x0`` (Salimans & Ho 2022) or ``x0``."""
    if prediction == "eps":
        return eps
    if prediction == "v":
        return expand(alpha, x0) * eps - expand(sigma, x0) * x0
    return x0


def to_x0(prediction: Prediction, out: Tensor, y_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The clean estimate implied by the backbone output ``out`` (variance-preserving: ``alpha^2 + sigma^2 = 1``)."""
    a, s = expand(alpha, y_t), expand(sigma, y_t)
    if prediction == "eps":
        return (y_t - s * out) / a
    if prediction == "v":
        return a * y_t - s * out
    return out


def to_eps(prediction: Prediction, out: Tensor, y_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The noise estimate implied by ``out`` (for score-based losses: ``score = -eps_hat / sigma``); the ``v`` form
    ``eps = sigma y_t + alpha v`` stays well conditioned as ``sigma -> 0``."""
    a, s = expand(alpha, y_t), expand(sigma, y_t)
    if prediction == "eps":
        return out
    if prediction == "v":
        return s * y_t + a * out
    return (y_t - a * out) / s


def shift_prediction(prediction: Prediction, out: Tensor, shift: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """A prediction made for ``x - shift`` re-expressed for ``x`` at the same noise: the noisy inputs are related by
    ``x_t = (x - shift)_t + alpha_t shift``, so ``eps`` is unchanged, ``x0`` gains ``shift`` and ``v`` loses
    ``sigma_t shift`` (the residual conditioning of :class:`~decoders.DiffusionDecoder`)."""
    if prediction == "eps":
        return out
    if prediction == "v":
        return out - expand(sigma, out) * shift
    return out + shift


def gate_prediction(prediction: Prediction, out: Tensor, y_t: Tensor, alpha: Tensor, sigma: Tensor, keep: Tensor | None = None) -> Tensor:
    """The prediction whose clean estimate is ``alpha_t`` times the one ``out`` implies (examples where ``keep`` is
    false are left as they are): ``x0 -> alpha x0``, ``eps -> sigma / (1 + alpha) y_t + alpha eps`` and
    ``v -> alpha sigma / (1 + alpha) y_t + alpha v`` (from ``x0 = (y - sigma eps) / alpha = alpha y - sigma v``; the
    factor ``(1 - alpha) / sigma`` is written ``sigma / (1 + alpha)``, which stays finite as ``sigma -> 0``). The
    gated residual of :class:`~decoders.DiffusionDecoder` uses it on ``x - shift``: its clean estimate tends to the
    shift as the noise grows."""
    a, s = expand(alpha, out), expand(sigma, out)
    if prediction == "x0":
        gated = a * out
    else:
        gated = (s if prediction == "eps" else a * s) / (1 + a) * y_t + a * out
    if keep is None:
        return gated
    return torch.where(keep.reshape(-1, *([1] * (out.dim() - 1))), gated, out)


def make_denoiser(
    net: Backbone,
    marginal: Marginal,
    prediction: Prediction,
    cond: Any = None,
    clip: tuple[Tensor | float, Tensor | float] | None = None,
) -> Denoiser:
    """Wrap ``net(x_t, t, cond)`` into a :data:`Denoiser`; ``clip=(low, high)`` clamps ``x0_hat`` to a data range
    (the guard against blow-up of ``x0 = (y_t - sigma eps) / alpha`` at high noise)."""

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = marginal.alpha_sigma(t)
        x0 = to_x0(prediction, net(x_t, t, cond), marginal.remove_offset(x_t, t), alpha, sigma)
        if clip is not None:
            low, high = (torch.as_tensor(c, dtype=x0.dtype, device=x0.device) for c in clip)
            x0 = torch.maximum(torch.minimum(x0, high), low)
        return x0

    return denoise
