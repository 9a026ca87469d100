"""Evaluation: per-modality classifiers trained on real data, and the coherence they judge."""

from diffmvae.evaluation.classifier import ImageClassifier, fit_classifier, predict
from diffmvae.evaluation.coherence import conditional_coherence

__all__ = ["ImageClassifier", "fit_classifier", "predict", "conditional_coherence"]
