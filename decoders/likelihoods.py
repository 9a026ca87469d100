"""Per-example log-likelihoods of the feed-forward decoders, summed over every non-batch dimension."""

from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

Likelihood = Literal["laplace", "gaussian", "bernoulli", "categorical"]


def _sum_event(t: Tensor) -> Tensor:
    return t.flatten(1).sum(dim=1)


def laplace_log_prob(x: Tensor, mean: Tensor, scale: float) -> Tensor:
    """``log Laplace(x; mean, scale)`` summed per example: ``[B]``."""
    return _sum_event(-(x - mean).abs() / scale - math.log(2.0 * scale))


def gaussian_log_prob(x: Tensor, mean: Tensor, scale: float) -> Tensor:
    """``log N(x; mean, scale^2)`` summed per example: ``[B]``."""
    return _sum_event(-0.5 * ((x - mean) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2.0 * math.pi))


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """``log Bernoulli(x; sigmoid(logits))`` for ``x`` in [0, 1], summed per example: ``[B]``."""
    return -_sum_event(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def categorical_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """``log Cat(x; softmax(logits))`` for integer labels ``x`` ``[B]`` and logits ``[B, K]``: ``[B]``."""
    return -F.cross_entropy(logits, x.long(), reduction="none")


def log_prob(likelihood: Likelihood, x: Tensor, out: Tensor, scale: float = 1.0) -> Tensor:
    """Dispatch on ``likelihood``; ``out`` is the decoder's raw output (logits for Bernoulli/categorical,
    the mean for Laplace/Gaussian)."""
    if likelihood == "laplace":
        return laplace_log_prob(x, out, scale)
    if likelihood == "gaussian":
        return gaussian_log_prob(x, out, scale)
    if likelihood == "bernoulli":
        return bernoulli_log_prob(x, out)
    if likelihood == "categorical":
        return categorical_log_prob(x, out)
    raise ValueError(f"unknown likelihood {likelihood!r}; expected one of laplace, gaussian, bernoulli, categorical")
