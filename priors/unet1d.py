"""A 1-D UNet over a latent vector seen as a one-channel sequence: ``net(z_t, t, cond) -> [B, d]``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decoders.nets import Attention, ResBlock, timestep_embedding
from encoders.base import group_norm


class UNet1d(nn.Module):
    """UNet over ``z [B, d]`` as ``[B, 1, d]``: one :class:`~decoders.nets.ResBlock` per level (``channels``), stride-2
    down-sampling between levels, self-attention at the coarsest level, skip connections.

    ``d`` need not be a power of two: the sequence is zero-padded to a multiple of ``2^(levels-1)`` and
    cropped back. ``cond`` is accepted for the backbone signature and must be ``None``.
    """

    def __init__(self, latent_dim: int, channels: Sequence[int] = (64, 128, 256), emb_dim: int = 128, attention: bool = True) -> None:
        super().__init__()
        if latent_dim < 1 or not channels:
            raise ValueError(f"UNet1d needs latent_dim >= 1 and at least one level, got {latent_dim}, {list(channels)}")
        self.latent_dim, self.levels = latent_dim, len(channels)
        self.emb = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.emb_dim = emb_dim
        self.stem = nn.Conv1d(1, channels[0], 3, padding=1)
        self.down = nn.ModuleList(ResBlock(c_in, c, emb_dim, dims=1) for c_in, c in zip([channels[0], *channels[:-1]], channels))
        self.pool = nn.ModuleList(nn.Conv1d(c, c, 3, stride=2, padding=1) for c in channels[:-1])
        self.mid = ResBlock(channels[-1], channels[-1], emb_dim, dims=1)
        self.attn = Attention(channels[-1]) if attention else nn.Identity()
        self.up = nn.ModuleList(ResBlock(2 * c, c_out, emb_dim, dims=1) for c, c_out in zip(channels[::-1], [*channels[::-1][1:], channels[0]]))
        self.out = nn.Sequential(group_norm(channels[0]), nn.SiLU(), nn.Conv1d(channels[0], 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, z_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``z_t [B, d]``, ``t [B]`` -> ``[B, d]``."""
        if cond is not None:
            raise ValueError("UNet1d is unconditional; cond must be None")
        emb = self.emb(timestep_embedding(t, self.emb_dim))
        size = self.latent_dim
        multiple = 2 ** (self.levels - 1)
        h = self.stem(F.pad(z_t[:, None, :], (0, -size % multiple)))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.attn(self.mid(h, emb))
        for i, block in enumerate(self.up):
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-1], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(h)[:, 0, :size]
