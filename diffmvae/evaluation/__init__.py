"""Evaluation: per-modality classifiers trained on real data, the coherence they judge, and Fréchet distances
in their feature space."""

from diffmvae.evaluation.classifier import ImageClassifier, fit_classifier, predict
from diffmvae.evaluation.coherence import conditional_coherence, unconditional_coherence
from diffmvae.evaluation.frechet import FeatureExtractor, frechet_distance

__all__ = [
    "FeatureExtractor", "ImageClassifier", "conditional_coherence", "fit_classifier", "frechet_distance", "predict",
    "unconditional_coherence",
]
