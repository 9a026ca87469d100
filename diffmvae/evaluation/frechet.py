"""Fréchet distance between real and generated images in a feature space, through torchmetrics'
``FrechetInceptionDistance(feature=<nn.Module>)``. Two spaces are reported everywhere:

* the judge's features (:class:`FeatureExtractor`, a classifier's penultimate layer): in-domain and sharp on what
  the classifier was trained to tell apart (the digit), but blind to what it was trained to ignore, so it rewards
  coherence and misses, for example, a loss of background variety;
* principal components of the pixels (:class:`PixelPCA`, fitted on real training images, no labels): it sees
  colour, brightness, background and layout (what dominates pixel variance) and nothing semantic beyond that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from diffmvae.evaluation.classifier import ImageClassifier
from diffmvae.io import DiffMVAEError


class FeatureExtractor(nn.Module):
    """Wraps a module with a ``features(x) -> [B, F]`` method (an :class:`ImageClassifier`) for torchmetrics."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        with torch.no_grad():
            self.num_features = int(model.features(torch.zeros(2, *model_input_shape(model))).shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.model.features(x)


class PixelPCA(nn.Module):
    """Label-free features: flattened pixels projected on the top principal axes of real training images
    (``x -> (x - mean) @ components.T``), fitted once by scikit-learn's PCA with ARPACK: the top axes only, to
    machine precision (its tolerance is zero), three times as fast as the full SVD at 2000 images of 28 x 28 x 3."""

    def __init__(self, mean: Tensor, components: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("components", components.float())
        self.num_features = int(components.shape[0])

    @classmethod
    def fit(cls, images: Tensor, components: int = 64) -> PixelPCA:
        """The PCA of ``images [N, C, H, W]`` in ``[0, 1]`` with ``min(components, N - 1, C H W)`` axes."""
        from sklearn.decomposition import PCA  # heavy: scikit-learn's PCA only when an evaluation fits one

        flat = images.flatten(1).double().numpy()
        if flat.shape[0] < 2:
            raise DiffMVAEError("a pixel PCA needs at least 2 real images")
        k = min(components, flat.shape[0] - 1, flat.shape[1])
        # ARPACK needs k < min(N, D); its start vector comes from random_state, so the fit repeats exactly
        solver = "arpack" if k < min(flat.shape) else "full"
        pca = PCA(n_components=k, svd_solver=solver, random_state=0).fit(flat)
        return cls(torch.from_numpy(pca.mean_), torch.from_numpy(np.ascontiguousarray(pca.components_)))

    def forward(self, x: Tensor) -> Tensor:
        return (x.flatten(1).to(self.mean.dtype) - self.mean) @ self.components.T


def pixel_pcas(train: Mapping[str, Tensor], names: Iterable[str], count: int, components: int) -> dict[str, PixelPCA]:
    """The label-free feature space of each modality in ``names``: a :class:`PixelPCA` with ``components`` axes,
    fitted on the first ``count`` real training images of ``train`` (a collated split)."""
    return {m: PixelPCA.fit(train[m][:count], components) for m in names}


def model_input_shape(model: nn.Module) -> tuple[int, int, int]:
    config = model.config if isinstance(model, ImageClassifier) else None
    if not config:
        raise ValueError(f"{type(model).__name__} has no config with in_channels / image_size")
    return (config["in_channels"], config["image_size"], config["image_size"])


def frechet_distance(real: Tensor | Iterable[Tensor], fake: Tensor | Iterable[Tensor], extractor: nn.Module, batch_size: int = 512) -> float:
    """FD between the feature statistics of ``real`` and ``fake`` images ``[N, C, H, W]`` in ``[0, 1]``;
    ``extractor`` is a :class:`FeatureExtractor` (in-domain) or an :class:`InceptionExtractor` (Inception FID)."""
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


class InceptionExtractor(nn.Module):
    """Inception-v3 pool features (2048) from a local weights file, for real Inception FID.

    Needs the optional ``fid`` extra (torch-fidelity, which needs a working torchvision); nothing is downloaded:
    ``weights`` is the ``pt_inception-2015-12-05`` file torch-fidelity would otherwise fetch.
    """

    num_features = 2048

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        weights = Path(weights)
        if not weights.is_file():
            raise DiffMVAEError(f"Inception weights file {weights} does not exist")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3  # heavy: Inception only with --inception_weights
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE  # heavy: as above
        except ImportError as e:  # pragma: no cover - depends on the torchmetrics build
            raise DiffMVAEError(f"Inception FID is unavailable in this torchmetrics ({e})") from e
        if not _TORCH_FIDELITY_AVAILABLE:
            raise DiffMVAEError("Inception FID needs the optional 'fid' extra: pip install 'diffmvae[fid]' (torch-fidelity, which needs a working torchvision)")
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights))

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` in ``[0, 1]`` (grey images are repeated to RGB) -> ``[B, 2048]``."""
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.net((x.clamp(0, 1) * 255).to(torch.uint8))
