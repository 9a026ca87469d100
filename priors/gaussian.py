"""The standard normal prior ``p(z) = N(0, I)`` of the multimodal ELBO."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from decoders.random import randn


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` summed over the last dimension: shape ``mu.shape[:-1]``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


class StandardNormalPrior(nn.Module):
    """Unconditional sampling from ``N(0, I_d)``; the interface a learned latent prior also implements."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def sample(self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
        """``[n, latent_dim]`` draws."""
        return randn((n, self.latent_dim), generator, device)
