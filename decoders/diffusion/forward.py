"""The forward process: how ``x_t`` is drawn from clean data, and where the reverse process starts.

Every process of this library has Gaussian marginals

    q(x_t | x_0, c) = N(alpha_t x_0 + offset_t(c), sigma_t^2 I),

with ``alpha_t, sigma_t`` from a :class:`~decoders.diffusion.schedules.Schedule` (variance preserving) and an
optional ``offset_t(c)`` that does not scale with ``x_0`` (MT-Diffusion's aggregation of the other modalities,
Chen et al. 2024 Theorem 2). The losses draw ``x_t`` through :meth:`Marginal.sample` and the samplers step through
:meth:`Marginal.mean`, so a process with another forward marginal is one subclass overriding :meth:`offset`.

Subtracting the offset, ``y_t = x_t - offset_t(c)``, gives ``q(y_t | x_0) = N(alpha_t x_0, sigma_t^2 I)``: the
samplers' DDIM / ancestral steps written with :meth:`Marginal.mean` are exact for any offset whose chain is
Markov in ``y`` (it is for MT-Diffusion's, see ``decoders.diffusion.samplers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from decoders.diffusion.schedules import Schedule
from decoders.random import randn


def expand(coef: Tensor, like: Tensor) -> Tensor:
    """``[B]`` coefficients reshaped to broadcast against ``like [B, ...]``."""
    return coef.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class ForwardProcess(nn.Module):
    """The variance-preserving forward process of ``schedule`` with no offset: ``x_t = alpha_t x_0 + sigma_t eps``.

    Subclasses override :meth:`offset` (a function of ``t`` and the forward condition ``c``) and set
    :attr:`has_offset`, which samplers that need the plain VP marginal read."""

    has_offset: ClassVar[bool] = False

    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self.schedule = schedule

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)`` shaped like ``t``."""
        return self.schedule.alpha_sigma(t)

    def offset(self, t: Tensor, cond: Any) -> Tensor | None:
        """The part of ``E[x_t | x_0, c]`` that does not scale with ``x_0``, ``[B, ...]``, or ``None`` (zero)."""
        return None

    def given(self, cond: Any = None) -> Marginal:
        """The marginals for one batch's forward condition ``cond`` (``None`` for a process without offset)."""
        return Marginal(self, cond)


@dataclass(frozen=True)
class Marginal:
    """``q(x_t | x_0, c)`` of a :class:`ForwardProcess` bound to a batch's forward condition ``c``."""

    process: ForwardProcess
    cond: Any = None

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.process.alpha_sigma(t)

    def mean(self, x0: Tensor, t: Tensor) -> Tensor:
        """``E[x_t | x_0, c] = alpha_t x_0 + offset_t(c)`` for ``x0 [B, ...]`` and ``t [B]``."""
        alpha, _ = self.process.alpha_sigma(t)
        mean = expand(alpha, x0) * x0
        offset = self.process.offset(t, self.cond)
        return mean if offset is None else mean + offset.to(mean.dtype)

    def remove_offset(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``y_t = x_t - offset_t(c)``, distributed as ``N(alpha_t x_0, sigma_t^2 I)``: the coordinates in which the
        eps / v / x0 parameterisations (``decoders.diffusion.parameterization``) are defined."""
        offset = self.process.offset(t, self.cond)
        return x_t if offset is None else x_t - offset.to(x_t.dtype)

    def add_offset(self, y_t: Tensor, t: Tensor) -> Tensor:
        """``x_t = y_t + offset_t(c)``, the inverse of :meth:`remove_offset`."""
        offset = self.process.offset(t, self.cond)
        return y_t if offset is None else y_t + offset.to(y_t.dtype)

    def rebase(self, x_t: Tensor, t: Tensor, previous: Marginal) -> Tensor:
        """``x_t``, which carries ``previous``'s offset, moved to this marginal's: the same offset-free point
        ``y_t``, so a chain whose forward condition changes (re-estimated modalities) removes exactly the offset it
        added and continues with the new one."""
        return x_t if previous is self else self.add_offset(previous.remove_offset(x_t, t), t)

    def sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``x_t = E[x_t | x_0, c] + sigma_t eps``."""
        _, sigma = self.process.alpha_sigma(t)
        return self.mean(x0, t) + expand(sigma, x0) * eps

    def noise_of(self, x_t: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """The ``eps`` for which :meth:`sample` gives ``x_t`` from ``x0``."""
        _, sigma = self.process.alpha_sigma(t)
        return (x_t - self.mean(x0, t)) / expand(sigma, x_t)

    def initial(self, shape: tuple[int, ...], t0: Tensor, anchor: Tensor | None, generator: torch.Generator | None,
                device: torch.device | str) -> Tensor:
        """Where the reverse process starts, float64: at ``t0 = 1`` the model's prior ``N(E[x_1 | anchor], I)``
        (``anchor`` 0 when ``None``; a residual decoder's mean image); at ``t0 < 1`` the forward marginal of the
        anchor, ``N(E[x_t0 | anchor], sigma_t0^2 I)`` (SDEdit-style truncated sampling)."""
        eps = randn(shape, generator, device, torch.float64)
        t_b = t0.to(device=eps.device, dtype=torch.float64).expand(shape[0])
        base = torch.zeros_like(eps) if anchor is None else anchor.to(device=eps.device, dtype=torch.float64).expand(shape)
        std = torch.ones_like(t_b) if bool(t0 >= 1) else self.process.alpha_sigma(t_b)[1]
        return self.mean(base, t_b) + expand(std, eps) * eps
