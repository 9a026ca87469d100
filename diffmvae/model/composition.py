"""Unite-and-Conquer for multimodal VAEs (Nair et al. 2023): compose conditional diffusion predictions from
several sources, within one model and across separately trained models.

* Within one model (:class:`Composition`, ``diffmvae sample/evaluate --compose``): a diffusion decoder trained with
  condition dropout generates a missing modality from one source per observed subset, each conditioning it on its
  own latent ``z_s ~ q(z | x_s)`` (``each``: every observed modality alone; ``each+poe``: also the PoE latent of all
  of them), composed with the decoder's null prediction, instead of decoding one PoE latent. Modalities whose
  decoders are feed-forward are decoded from the PoE latent as usual.
* Across models (:class:`UniteSpec`, ``diffmvae unite``): checkpoints whose diffusion decoders generate the same
  target modality, each conditioned on what it was trained on, composed at sampling time with each model's own null
  prediction weighed by its reliability. The models never saw their conditions together.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffmvae.io import DiffMVAEError

log = logging.getLogger(__name__)

SOURCE_RULES = ("each", "each+poe", "poe")


def parse_floats(text: str | float | Sequence[float], what: str) -> tuple[float, ...]:
    """``"1,0.5"`` / ``1.5`` / ``[1, 0.5]`` -> floats; a bad entry gives one line naming ``what``."""
    if isinstance(text, (int, float)):
        return (float(text),)
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise DiffMVAEError(f"{what} must be numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise DiffMVAEError(f"{what} must be finite numbers, got {text!r}")
    return values


@dataclass(frozen=True)
class Composition:
    """Which sources compose a missing modality within one model, and their weights.

    Args:
        sources: ``each`` (one source per observed modality), ``each+poe`` (those and the PoE latent of all observed
            modalities), ``poe`` (the PoE latent alone: with ``weights`` ``w`` this is classifier-free guidance on it),
            or explicit subsets of the observed modalities (``[[m0], [m2], [m0, m2]]``, on the command line
            ``m0;m2;m0+m2``).
        weights: ``beta`` per source: one number for every source, or one per explicit source.
        poe_weight: ``beta`` of the PoE source of ``each+poe`` (default: the same as the others).
        draws: latents drawn per source (``z_s^1..z_s^n ~ q(z | x_s)``), each its own source with the source's weight:
            ``n`` draws of weight ``1 / n`` average the predictions over the posterior; weight 1 each multiplies them
            (what the draws share, the digit, is kept; what they disagree on is not).
    """

    sources: str | tuple[tuple[str, ...], ...] = "each"
    weights: tuple[float, ...] = (1.0,)
    poe_weight: float | None = None
    draws: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.draws, int) or self.draws < 1:
            raise DiffMVAEError(f"composition draws must be an integer >= 1, got {self.draws!r}")
        if isinstance(self.sources, str):
            if self.sources not in SOURCE_RULES:
                raise DiffMVAEError(f"unknown composition sources {self.sources!r}; use {', '.join(SOURCE_RULES)} or subsets like m0;m2;m0+m2")
            if len(self.weights) != 1:
                raise DiffMVAEError(f"composition {self.sources!r} takes one weight for every source, got {list(self.weights)}")
        else:
            if not self.sources or any(not s for s in self.sources):
                raise DiffMVAEError(f"composition sources must be non-empty subsets, got {self.sources!r}")
            if len(self.weights) not in (1, len(self.sources)):
                raise DiffMVAEError(f"{len(self.sources)} composition sources need 1 or {len(self.sources)} weights, got {list(self.weights)}")

    @classmethod
    def parse(cls, sources: str, weights: str | float | Sequence[float] = 1.0, poe_weight: float | None = None, draws: int = 1) -> Composition:
        """From the command line: ``sources`` a rule or ``m0;m2;m0+m2``, ``weights`` ``"1.5"`` or ``"1,1,0.5"``."""
        text = sources.strip()
        rule: str | tuple[tuple[str, ...], ...] = text if text in SOURCE_RULES else tuple(
            tuple(m.strip() for m in part.split("+")) for part in text.split(";"))
        return cls(rule, parse_floats(weights, "--weights"), poe_weight, draws)

    def resolve(self, given: Sequence[str]) -> list[tuple[tuple[str, ...], float]]:
        """``[(subset, beta), ...]`` for the observed modalities ``given`` (duplicates of one subset kept once; each
        source ``draws`` times)."""
        given = tuple(given)
        if not given:
            raise DiffMVAEError("a composition needs observed modalities (--given)")
        w = self.weights[0]
        if self.sources == "each":
            out = [((m,), w) for m in given]
        elif self.sources == "poe":
            out = [(given, w)]
        elif self.sources == "each+poe":
            out = [((m,), w) for m in given]
            if len(given) > 1:
                out.append((given, self.poe_weight if self.poe_weight is not None else w))
        else:
            weights = self.weights if len(self.weights) > 1 else self.weights * len(self.sources)
            out = []
            for subset, beta in zip(self.sources, weights):
                outside = [m for m in subset if m not in given]
                if outside:
                    raise DiffMVAEError(f"composition source {'+'.join(subset)} names {outside[0]!r}, which is not observed "
                                        f"(--given {','.join(given)})")
                out.append((tuple(m for m in given if m in subset), beta))
        seen: dict[tuple[str, ...], float] = {}
        for subset, beta in out:
            seen.setdefault(subset, beta)
        return [item for item in seen.items() for _ in range(self.draws)]

    def record(self) -> dict[str, Any]:
        sources = self.sources if isinstance(self.sources, str) else ["+".join(s) for s in self.sources]
        return {"sources": sources, "weights": list(self.weights), "poe_weight": self.poe_weight, "draws": self.draws}
