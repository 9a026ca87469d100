"""The combined multimodal ELBO (seed 003 eq. 17/23) as a typed record of per-example terms."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ELBORecord:
    """Per-term, per-example values of the negative mixture-of-subsets ELBO; reduced late by the caller.

    Attributes:
        nll: per modality ``[B]``: ``-log p(x_m|z)`` (feed-forward) or ``L_diff(x_m, z)`` (diffusion) with
            ``z ~ q(z|x_A)`` of the subset assigned to the example; zero where ``x_m`` is missing.
        kl: ``[B]``, ``sum_A omega_A KL(q(z|x_A) || p(z))`` over every subset (analytic).
        subset: ``[B]`` index of the subset each example's reconstruction used.
        present: ``[B, M]`` bool, which modalities each example has.
    """

    nll: Mapping[str, Tensor]
    kl: Tensor
    subset: Tensor
    present: Tensor

    def loss(self, beta: float = 1.0, weights: Mapping[str, float] | None = None) -> Tensor:
        """``-ELBO`` per example ``[B]``: ``sum_m w_m nll_m + beta * kl`` (``w_m`` is ``lambda_j`` for diffusion
        modalities, seed 003 eq. 17; 1 by default)."""
        weights = weights or {}
        rec = sum(weights.get(m, 1.0) * v for m, v in self.nll.items())
        return rec + beta * self.kl

    def means(self) -> dict[str, Tensor]:
        """Batch means of every term, for logging: ``nll/<modality>`` and ``kl``."""
        out = {f"nll/{m}": v.mean() for m, v in self.nll.items()}
        out["kl"] = self.kl.mean()
        return out
