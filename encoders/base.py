"""The encoder interface shared by every modality."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

LOGVAR_RANGE = (-12.0, 8.0)


def group_norm(channels: int, enabled: bool = True) -> nn.Module:
    """GroupNorm with up to 8 groups dividing ``channels`` (identity when disabled); batch-independent, so safe
    under DDP."""
    return nn.GroupNorm(math.gcd(8, channels), channels) if enabled else nn.Identity()


class Encoder(nn.Module):
    """Maps one modality to a diagonal Gaussian expert ``q(z|x_m) = N(mu, diag exp(logvar))``.

    Subclasses implement :meth:`features` returning ``[B, F]``; this base owns the Gaussian head so every
    encoder clamps its log-variance the same way (a PoE divides by the variance: one runaway expert would
    otherwise dominate every subset it is in).
    """

    def __init__(self, latent_dim: int, feature_dim: int) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim
        self.head = nn.Linear(feature_dim, 2 * latent_dim)

    def features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def portable_args(self) -> dict[str, Any]:
        """``init_args`` that rebuild this encoder from its config alone, with nothing read from the author's disk
        (a pretrained network's sizes instead of its folder; the weights travel in the model's state): ``{}`` for
        encoders that read no files."""
        return {}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(mu, logvar)``, each ``[B, latent_dim]``."""
        mu, logvar = self.head(self.features(x)).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)
