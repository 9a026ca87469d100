"""Feed-forward decoders: a conv image decoder and an MLP decoder for vectors and labels. Each returns one term,
``"<modality>/nll"`` = ``-log p(x|z)``, and generates the likelihood's mean (images, vectors) or a sample (labels)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from decoders.base import Decoder, Observed, skipped
from decoders.likelihoods import Likelihood, log_prob
from decoders.random import multinomial
from decoders.sampling import SamplingSettings
from encoders.base import group_norm

ImageLikelihood = Literal["laplace", "gaussian", "bernoulli"]


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


class FeedForwardDecoder(Decoder):
    """A one-modality decoder with a closed-form likelihood: subclasses implement :meth:`nll` and :meth:`sample`."""

    def bound_terms(self) -> frozenset[str]:
        return frozenset({"nll"})

    def nll(self, z: Tensor, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``-log p(x|z)`` per example, ``[B]``."""
        raise NotImplementedError

    def sample(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, z: Tensor, example: Observed, *, generator=None, skip=frozenset()) -> dict[str, Tensor]:
        (m,) = self.modalities
        if m not in example or skipped("nll", skip):
            return {}
        return {f"{m}/nll": self.nll(z, example[m])}

    def generate(self, z: Tensor, given: Observed, *, targets: Sequence[str], sampling: SamplingSettings = SamplingSettings(),
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {m: self.sample(z, generator) for m in targets}


class ConvImageDecoder(FeedForwardDecoder):
    """``z [B, d] -> image [B, C, H, W]`` through a dense layer and stride-2 transposed convolutions.

    The output mean lies in [0, 1] (a sigmoid), so Laplace / Gaussian means are valid images and a
    Bernoulli decoder's logits are the pre-sigmoid values.

    Args:
        latent_dim: size ``d`` of the shared latent.
        out_channels: image channels ``C``.
        image_size: ``H == W``; must be divisible by ``2 ** len(channels)``.
        channels: input channels of each upsampling stage (the first is the dense layer's output).
        likelihood: ``laplace`` (the PolyMNIST default), ``gaussian`` or ``bernoulli``.
        scale: the fixed scale of the Laplace / Gaussian likelihood.
        norm: GroupNorm after each upsampling stage.
        modalities: the modality it decodes (default: the one it is keyed by).
    """

    def __init__(
        self,
        latent_dim: int,
        out_channels: int = 3,
        image_size: int = 28,
        channels: Sequence[int] = (64, 64),
        hidden_dim: int = 256,
        likelihood: ImageLikelihood = "laplace",
        scale: float = 0.75,
        norm: bool = True,
        modalities: Sequence[str] = (),
    ) -> None:
        super().__init__(modalities, latent_dim)
        check_choice("likelihood", likelihood, get_args(ImageLikelihood))
        start = image_size // 2 ** len(channels)
        if start * 2 ** len(channels) != image_size:
            raise ValueError(f"image_size {image_size} is not divisible by 2**{len(channels)} (len(channels))")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.likelihood, self.scale = likelihood, scale
        self.start_shape = (channels[0], start, start)
        self.image_shape = (out_channels, image_size, image_size)
        ups: list[nn.Module] = []
        for c_in, c_out in zip(channels, [*channels[1:], channels[-1]]):
            ups += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), group_norm(c_out, norm), nn.SiLU()]
        self.dense = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, channels[0] * start * start), nn.SiLU()
        )
        self.up = nn.Sequential(*ups, nn.Conv2d(channels[-1], out_channels, 3, padding=1))

    def logits(self, z: Tensor) -> Tensor:
        """Pre-sigmoid output ``[B, C, H, W]``."""
        return self.up(self.dense(z).view(-1, *self.start_shape))

    def mean(self, z: Tensor) -> Tensor:
        """The likelihood mean ``[B, C, H, W]`` in [0, 1]."""
        return torch.sigmoid(self.logits(z))

    def nll(self, z: Tensor, x: Tensor) -> Tensor:
        out = self.logits(z)
        if self.likelihood != "bernoulli":
            out = torch.sigmoid(out)
        return -log_prob(self.likelihood, x, out, self.scale)

    def sample(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The mean image (sampling pixel noise from a factorized likelihood only adds noise)."""
        return self.mean(z)


class MLPDecoder(FeedForwardDecoder):
    """``z [B, d] ->`` a label (``categorical``, ``[B]`` integers) or a vector (``gaussian``/``laplace``/``bernoulli``,
    ``[B, D]``).

    Args:
        latent_dim: size ``d`` of the shared latent.
        output_dim: number of classes for ``categorical``, the vector size otherwise.
        likelihood: ``categorical``, ``gaussian``, ``laplace`` or ``bernoulli``.
        hidden: widths of the hidden layers.
        scale: fixed scale of a Gaussian / Laplace likelihood.
        modalities: the modality it decodes (default: the one it is keyed by).
    """

    def __init__(
        self,
        latent_dim: int,
        output_dim: int,
        likelihood: Likelihood = "categorical",
        hidden: Sequence[int] = (128, 128),
        scale: float = 1.0,
        modalities: Sequence[str] = (),
    ) -> None:
        super().__init__(modalities, latent_dim)
        check_choice("likelihood", likelihood, get_args(Likelihood))
        dims = [latent_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(dims[-1], output_dim))
        self.likelihood, self.scale = likelihood, scale

    def nll(self, z: Tensor, x: Tensor) -> Tensor:
        return -log_prob(self.likelihood, x, self.net(z), self.scale)

    def sample(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Categorical: a label sampled from the predicted distribution; Bernoulli: the probabilities; otherwise the mean."""
        out = self.net(z)
        if self.likelihood == "categorical":
            return multinomial(out.softmax(-1), generator)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out
