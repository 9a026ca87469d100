"""Scores of generated values against the example's own: attribute F1 and binary-mask F1 / IoU (Wesego & Rooshenas 2024 §6.4 reports
F1 on CelebAMask-HQ). F1 is per example, then averaged (scikit-learn's ``average="samples"``, what the authors' code,
SBM-AE's ``train_cel_upd_mopoe_an.py``, computes); generated probabilities are thresholded at one half. An example with
no positive entry in either the truth or the generation scores 1 (scikit-learn's ``zero_division=1``)."""

from __future__ import annotations

import numpy as np
from torch import Tensor


def binary(x: Tensor) -> np.ndarray:
    """``[N, ...]`` values in [0, 1] as a 0/1 ``[N, D]`` boolean array (threshold one half)."""
    return (x.detach().float().flatten(1) >= 0.5).cpu().numpy()


def _pair(true: Tensor, generated: Tensor) -> tuple[np.ndarray, np.ndarray]:
    t, g = binary(true), binary(generated)
    if t.shape != g.shape:
        raise ValueError(f"true and generated values differ in shape: {list(true.shape)} vs {list(generated.shape)}")
    return t, g


def f1_samples(true: Tensor, generated: Tensor) -> float:
    """Mean per-example F1 ``2 tp / (2 tp + fp + fn)`` of the 0/1 entries (attributes, or mask pixels): scikit-learn's
    ``f1_score(average="samples", zero_division=1)``."""
    from sklearn.metrics import f1_score  # heavy: scikit-learn only when values are matched

    return float(f1_score(*_pair(true, generated), average="samples", zero_division=1))


def iou(true: Tensor, generated: Tensor) -> float:
    """Mean per-example intersection over union ``tp / (tp + fp + fn)`` of the 0/1 entries: scikit-learn's
    ``jaccard_score(average="samples", zero_division=1)``."""
    from sklearn.metrics import jaccard_score  # heavy: scikit-learn only when values are matched

    return float(jaccard_score(*_pair(true, generated), average="samples", zero_division=1))


def match_rows(k: int, target: str, true: Tensor, generated: Tensor) -> list[dict]:
    """Table rows ``mask_f1`` and ``mask_iou`` of one generated binary modality against the true one."""
    return [{"metric": "mask_f1", "k": k, "target": target, "value": f1_samples(true, generated)},
            {"metric": "mask_iou", "k": k, "target": target, "value": iou(true, generated)}]


__all__ = ["binary", "f1_samples", "iou", "match_rows"]
