"""Building blocks of the diffusion backbones (the 2-D image UNet here and the 1-D latent UNet of ``priors``):
sinusoidal time embedding, residual blocks with adaptive group norm (FiLM), self-attention over positions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoders.base import group_norm


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of times ``t [B]`` in ``[0, 1]`` (scaled by 1000, as for DDPM's steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([args.cos(), args.sin()], dim=-1), (0, dim % 2))


def conv(dims: int, c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Module:
    return (nn.Conv1d if dims == 1 else nn.Conv2d)(c_in, c_out, kernel, stride=stride, padding=kernel // 2)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the embedding enters as a scale and shift of the second norm (adaptive group
    norm / FiLM). ``dims``: 1 for sequences ``[B, C, L]``, 2 for images ``[B, C, H, W]``."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dims: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), conv(dims, c_in, c_out)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.drop, self.conv2 = group_norm(c_out), nn.Dropout(dropout), conv(dims, c_out, c_out)
        self.skip = conv(dims, c_in, c_out, kernel=1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb).reshape(*emb.shape[:1], -1, *([1] * (x.dim() - 2))).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class Attention(nn.Module):
    """Self-attention over all positions of ``[B, C, *spatial]``, residual."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = nn.MultiheadAttention(channels, heads if channels % heads == 0 else 1, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x).flatten(2).transpose(1, 2)
        return x + self.attn(h, h, h, need_weights=False)[0].transpose(1, 2).reshape(x.shape)
