"""The combined multimodal ELBO (Wesego & Rooshenas 2024 eq. 17/23) as a typed record of named per-example terms."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import Tensor


def split_term(name: str) -> tuple[str | None, str]:
    """``"m0/diffusion" -> ("m0", "diffusion")``; ``"kl" -> (None, "kl")``."""
    modality, sep, kind = name.partition("/")
    return (modality, kind) if sep else (None, name)


@dataclass(frozen=True)
class ELBORecord:
    """Per-term, per-example values of a model's negative ELBO (or, for a surrogate decoder loss, the objective);
    weighted and reduced late, by the caller.

    Attributes:
        terms: ``"<modality>/<kind>" -> [B]`` for every decoder term (``m0/nll`` for a feed-forward likelihood,
            ``m0/diffusion`` and ``m0/mean_nll`` for a diffusion decoder with a mean head, ``m0/diffusion_recon``
            and ``m0/diffusion_prior`` for VDM, ...), zero where the modality is missing; and ``"kl" -> [B]``,
            ``sum_A omega_A KL(q(z|x_A) || p(z))`` over every subset (analytic).
        present: ``[B, M]`` bool, which modalities each example has.
        subset: ``[B]`` index of the subset each example's reconstruction used (mixture VAEs), or ``None``.
    """

    terms: Mapping[str, Tensor]
    present: Tensor
    subset: Tensor | None = None

    def weight(self, name: str, beta: float, modality_weights: Mapping[str, float], term_weights: Mapping[str, float]) -> float:
        """``beta`` for the KL; otherwise ``modality_weights[m]`` (``lambda_j`` of Wesego & Rooshenas 2024 eq. 17) times
        ``term_weights[name]`` or ``term_weights[kind]`` (1 where not given)."""
        modality, kind = split_term(name)
        if modality is None:
            return beta if kind == "kl" else term_weights.get(kind, 1.0)
        return modality_weights.get(modality, 1.0) * term_weights.get(name, term_weights.get(kind, 1.0))

    def loss(self, beta: float = 1.0, modality_weights: Mapping[str, float] | None = None,
             term_weights: Mapping[str, float] | None = None) -> Tensor:
        """The weighted sum of every term per example ``[B]`` (``-ELBO`` with all weights 1)."""
        mw, tw = modality_weights or {}, term_weights or {}
        return sum(self.weight(name, beta, mw, tw) * value for name, value in self.terms.items())

    def total(self, names: Iterable[str]) -> Tensor:
        """The unweighted sum of the terms ``names`` per example."""
        return sum(self.terms[n] for n in names)

    def means(self) -> dict[str, Tensor]:
        """Batch means of every term, for logging."""
        return {name: value.mean() for name, value in self.terms.items()}
