"""Coherence of generated modalities as judged by classifiers trained on real data (DESIGN §3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from diffmvae.evaluation.classifier import predict


def conditional_coherence(
    samples: Mapping[str, Tensor], labels: Tensor, given: Sequence[str], classifiers: Mapping[str, nn.Module]
) -> dict[str, float]:
    """Fraction of each generated (not given) modality classified as the true label: ``{modality: acc}``."""
    out = {}
    for m, x in samples.items():
        if m in given or m not in classifiers:
            continue
        out[m] = (predict(classifiers[m], x) == labels).float().mean().item()
    return out
