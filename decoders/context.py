"""A decoder that reads another modality of its example: ``p(x_m | z, x_c)``.

It is the smallest decoder that needs the whole example rather than ``z`` alone, the slot MT-Diffusion's joint
decoders use: a conv image decoder whose input is ``z`` together with features of another observed image
modality ``x_c`` (an image-to-image translation decoder inside the VAE). Where ``x_c`` is not observed, and for a
random ``context_dropout`` share of training examples, a learned "absent" vector stands in for its features, so
the same decoder generates from ``z`` alone or from ``z`` and the context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from decoders.base import Decoder, Observed, skipped
from decoders.feedforward import ConvImageDecoder, ImageLikelihood
from decoders.random import rand
from decoders.sampling import SamplingSettings
from encoders.image import conv_features


class ContextImageDecoder(Decoder):
    """Args:
        latent_dim: size of ``z``.
        context: the modality it reads (another image modality of the same example).
        context_channels, context_size: that modality's shape.
        context_dim: size of the context features.
        context_dropout: share of training examples decoded as if the context were absent.
        out_channels, image_size, channels, hidden_dim, likelihood, scale: the image decoder
            (:class:`~decoders.ConvImageDecoder`).
        modalities: the modality it decodes (default: the one it is keyed by).
    """

    def __init__(
        self,
        latent_dim: int,
        context: str,
        context_channels: int = 3,
        context_size: int = 28,
        context_dim: int = 32,
        context_dropout: float = 0.5,
        out_channels: int = 3,
        image_size: int = 28,
        channels: Sequence[int] = (64, 64),
        hidden_dim: int = 256,
        likelihood: ImageLikelihood = "laplace",
        scale: float = 0.75,
        modalities: Sequence[str] = (),
    ) -> None:
        super().__init__(modalities, latent_dim)
        if not 0.0 <= context_dropout < 1.0:
            raise ValueError(f"context_dropout must be in [0, 1), got {context_dropout}")
        self.context, self.context_dropout = context, context_dropout
        self.reads = (context,)
        self.context_net = conv_features(context_channels, context_size, (16, 32), context_dim)
        self.absent = nn.Parameter(torch.zeros(context_dim))
        self.image = ConvImageDecoder(latent_dim + context_dim, out_channels, image_size, channels, hidden_dim, likelihood, scale)

    def bind(self, key: str) -> ContextImageDecoder:
        super().bind(key)
        if self.context in self.modalities:
            raise ValueError(f"ContextImageDecoder for {key!r} cannot read its own target {self.context!r}")
        return self

    def bound_terms(self) -> frozenset[str]:
        return frozenset({"nll"})

    def features(self, z: Tensor, example: Observed, use: Tensor) -> Tensor:
        """``[z, features of x_c]`` where ``use [B]`` is true, ``[z, absent]`` elsewhere."""
        feats = self.absent.expand(z.shape[0], -1)
        if self.context in example:
            feats = torch.where(use[:, None], self.context_net(example[self.context]), feats)
        return torch.cat([z, feats], dim=1)

    def loss(self, z: Tensor, example: Observed, *, generator=None, skip=frozenset()) -> dict[str, Tensor]:
        (m,) = self.modalities
        if m not in example or skipped("nll", skip):
            return {}
        use = example.mask(self.context) & (rand((z.shape[0],), generator, z.device) >= self.context_dropout)
        return {f"{m}/nll": self.image.nll(self.features(z, example, use), example[m])}

    def generate(self, z: Tensor, given: Observed, *, targets: Sequence[str], sampling: SamplingSettings = SamplingSettings(),
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {m: self.image.mean(self.features(z, given, given.mask(self.context))) for m in targets}
