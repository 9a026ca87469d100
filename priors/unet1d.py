"""A 1-D UNet over a latent vector seen as a one-channel sequence (DESIGN §2.4): ``net(z_t, t, cond) -> [B, d]``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoders.base import group_norm


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of times ``t [B]`` in ``[0, 1]`` (scaled by 1000, as for DDPM's steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, dim % 2))


class ResBlock1d(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding entering as a FiLM scale and shift."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv1d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv1d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[..., None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class Attention1d(nn.Module):
    """Self-attention over sequence positions: mixes every latent coordinate with every other."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = nn.MultiheadAttention(channels, heads if channels % heads == 0 else 1, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x).transpose(1, 2)
        return x + self.attn(h, h, h, need_weights=False)[0].transpose(1, 2)


class UNet1d(nn.Module):
    """UNet over ``z [B, d]`` as ``[B, 1, d]``: one :class:`ResBlock1d` per level (``channels``), stride-2
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
        self.down = nn.ModuleList(ResBlock1d(c_in, c, emb_dim) for c_in, c in zip([channels[0], *channels[:-1]], channels))
        self.pool = nn.ModuleList(nn.Conv1d(c, c, 3, stride=2, padding=1) for c in channels[:-1])
        self.mid = ResBlock1d(channels[-1], channels[-1], emb_dim)
        self.attn = Attention1d(channels[-1]) if attention else nn.Identity()
        self.up = nn.ModuleList(ResBlock1d(2 * c, c_out, emb_dim) for c, c_out in zip(channels[::-1], [*channels[::-1][1:], channels[0]]))
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
