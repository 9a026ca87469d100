"""Fréchet distance between real and generated images in a feature space (DESIGN §3), through torchmetrics'
``FrechetInceptionDistance(feature=<nn.Module>)``; the in-domain extractor is a classifier's penultimate layer."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance


class FeatureExtractor(nn.Module):
    """Wraps a module with a ``features(x) -> [B, F]`` method (an :class:`ImageClassifier`) for torchmetrics."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        with torch.no_grad():
            self.num_features = int(model.features(torch.zeros(2, *model_input_shape(model))).shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.model.features(x)


def model_input_shape(model: nn.Module) -> tuple[int, int, int]:
    config = getattr(model, "config", None)
    if not config:
        raise ValueError(f"{type(model).__name__} has no config with in_channels / image_size")
    return (config["in_channels"], config["image_size"], config["image_size"])


def frechet_distance(real: Tensor | Iterable[Tensor], fake: Tensor | Iterable[Tensor], extractor: FeatureExtractor, batch_size: int = 512) -> float:
    """FD between the feature statistics of ``real`` and ``fake`` images ``[N, C, H, W]`` in ``[0, 1]``."""
    metric = FrechetInceptionDistance(feature=extractor, reset_real_features=True, normalize=True)
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for chunk in _chunks(images, batch_size):
                metric.update(chunk.float(), real=is_real)
        return float(metric.compute())


def _chunks(images: Tensor | Iterable[Tensor], batch_size: int) -> Iterable[Tensor]:
    if isinstance(images, Tensor):
        return images.split(batch_size)
    return images
