"""The decoder interface: what the multimodal ELBO and the samplers need from any decoder."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


class Decoder(nn.Module):
    """A conditional model ``p(x_m | z)`` of one modality.

    ``is_diffusion`` tells the ELBO which sum of seed 003 eq. 17 the modality belongs to: feed-forward
    decoders contribute ``-log p(x|z)`` as their loss, diffusion decoders their diffusion loss ``L_diff``.
    """

    is_diffusion: ClassVar[bool] = False

    def loss(self, x: Tensor, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Per-example term to minimise, ``[B]``: ``-log p(x|z)`` or a diffusion loss bounding it."""
        raise NotImplementedError

    def generate(self, z: Tensor, *, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        """A sample of the modality given ``z`` ``[B, d]``, in data space."""
        raise NotImplementedError
