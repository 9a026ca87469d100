"""Coherence of generated modalities as judged by classifiers trained on real data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from diffmvae.evaluation.classifier import predict


def conditional_coherence(
    samples: Mapping[str, Tensor], labels: Tensor, given: Sequence[str], classifiers: Mapping[str, nn.Module]
) -> dict[str, float]:
    """Fraction of each generated (not given) modality classified as the true label: ``{modality: acc}`` (for
    multi-label attributes, the fraction of attributes predicted right)."""
    out = {}
    for m, x in samples.items():
        if m in given or m not in classifiers:
            continue
        out[m] = (predict(classifiers[m], x) == labels).float().mean().item()
    return out


def unconditional_coherence(samples: Mapping[str, Tensor], classifiers: Mapping[str, nn.Module]) -> dict[str, float]:
    """Agreement of jointly generated modalities: ``all`` is the fraction of samples on which every
    judged modality gets the same class (for multi-label classifiers, the same attribute vector);
    ``at_least_k`` the fraction where some class gets at least ``k`` votes."""
    names = [m for m in samples if m in classifiers]
    if len(names) < 2:
        raise ValueError("unconditional coherence needs at least two judged modalities")
    preds = torch.stack([predict(classifiers[m], samples[m]) for m in names], dim=1)  # [N, M] or [N, M, A]
    if preds.dim() == 3:  # multi-label: each distinct attribute vector is one "class"
        preds = torch.unique(preds.flatten(0, 1), dim=0, return_inverse=True)[1].view(preds.shape[:2])
    votes = torch.nn.functional.one_hot(preds).sum(dim=1).amax(dim=1)  # [N]: size of the largest agreeing group
    out = {"all": (votes == len(names)).float().mean().item()}
    out.update({f"at_least_{k}": (votes >= k).float().mean().item() for k in range(2, len(names))})
    return out
