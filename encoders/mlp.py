"""MLP encoder for vector modalities and class labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from encoders.base import Encoder


class MLPEncoder(Encoder):
    """``[B, input_dim]`` float vectors (or ``[B]`` integer labels when ``num_classes`` is set) to an expert.

    Args:
        latent_dim: size ``d`` of the shared latent.
        input_dim: vector size; for labels leave it ``None`` and set ``num_classes``.
        num_classes: treat the modality as a categorical label, one-hot encoded.
        hidden: widths of the hidden layers.
    """

    def __init__(
        self,
        latent_dim: int,
        input_dim: int | None = None,
        num_classes: int | None = None,
        hidden: Sequence[int] = (128, 128),
    ) -> None:
        if (input_dim is None) == (num_classes is None):
            raise ValueError("MLPEncoder needs exactly one of input_dim (vectors) or num_classes (labels)")
        dims = [input_dim or num_classes, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        super().__init__(latent_dim, dims[-1])
        self.num_classes = num_classes
        self.net = nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        if self.num_classes is not None:
            x = F.one_hot(x.long(), self.num_classes).float()
        return self.net(x)
