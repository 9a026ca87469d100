"""The image UNet of the diffusion decoders: ``net(x_t, t, cond) -> [B, C, H, W]`` conditioned on the latent ``z``
through the embedding (adaptive group norm / FiLM) and, optionally, on an image concatenated to ``x_t``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decoders.nets import Attention, ResBlock, conv, timestep_embedding
from encoders.base import group_norm


@dataclass
class Condition:
    """What a conditional backbone sees besides ``(x_t, t)``.

    Attributes:
        z: the latent ``[B, d]`` (FiLM), or ``None``.
        image: a conditioning image ``[B, C_c, H, W]`` concatenated to ``x_t`` (e.g. the decoder's mean), or ``None``.
        drop: ``[B]`` bool; where true the condition is replaced by the learned null (condition dropout /
            the unconditional prediction of guidance and Unite-and-Conquer).
        shift: ``[B, C, H, W]``, for a backbone that models ``x - shift`` (the residual conditioning of
            :class:`~decoders.DiffusionDecoder`, which re-expresses its predictions for ``x``); the UNet ignores it.
        vector: ``[B, D]`` another condition entering through the embedding (e.g. a label's probability vector:
            MT-Diffusion's backbone route), or ``None``.
    """

    z: Tensor | None = None
    image: Tensor | None = None
    drop: Tensor | None = None
    shift: Tensor | None = None
    vector: Tensor | None = None


class UNet2d(nn.Module):
    """A UNet for ``image_size`` 28, 32, 64, ...: one :class:`~decoders.nets.ResBlock` per level (``channels``),
    stride-2 down-sampling between levels, attention at the levels in ``attention_levels``, skips.

    Args:
        in_channels: channels of ``x_t`` (and of the output).
        latent_dim: size of ``z`` (0: no latent condition).
        cond_channels: channels of the conditioning image (0: none).
        channels: width per level; ``image_size`` must be divisible by ``2^(len(channels) - 1)``.
        emb_dim: size of the time (+ condition) embedding.
        vector_dim: size of ``Condition.vector`` (0: none), embedded and added to the time embedding.
        patch_size: side of the pixel patches the UNet works on: ``p > 1`` folds every ``p x p`` patch of ``x_t``
            (and of the conditioning image) into channels before the first level and unfolds the output
            (``pixel_unshuffle`` / ``pixel_shuffle``), so the first level runs at ``H / p`` (the ``features`` too).
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_dim: int = 0,
        cond_channels: int = 0,
        channels: Sequence[int] = (32, 64, 64),
        emb_dim: int = 128,
        attention_levels: Sequence[int] = (),
        dropout: float = 0.0,
        vector_dim: int = 0,
        patch_size: int = 1,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("UNet2d needs at least one level")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        self.channels, self.vector_dim = tuple(channels), vector_dim
        if vector_dim:
            self.vector_embed = nn.Sequential(nn.Linear(vector_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.in_channels, self.latent_dim, self.cond_channels, self.emb_dim = in_channels, latent_dim, cond_channels, emb_dim
        self.levels = len(channels)
        self.time = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if latent_dim:
            self.z_embed = nn.Sequential(nn.Linear(latent_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            self.null_z = nn.Parameter(torch.zeros(emb_dim))
        self.stem = conv(2, (in_channels + cond_channels) * patch_size**2, channels[0])
        widths = [channels[0], *channels]
        self.down = nn.ModuleList(ResBlock(widths[i], widths[i + 1], emb_dim, 2, dropout) for i in range(self.levels))
        self.pool = nn.ModuleList(conv(2, c, c, stride=2) for c in channels[:-1])
        self.down_attn = nn.ModuleList(Attention(c) if i in attention_levels else nn.Identity() for i, c in enumerate(channels))
        self.mid = ResBlock(channels[-1], channels[-1], emb_dim, 2, dropout)
        rev = list(channels[::-1])
        self.up = nn.ModuleList(ResBlock(2 * c, c_out, emb_dim, 2, dropout) for c, c_out in zip(rev, [*rev[1:], channels[0]]))
        self.out = nn.Sequential(group_norm(channels[0]), nn.SiLU(), conv(2, channels[0], in_channels * patch_size**2))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def embed(self, t: Tensor, cond: Condition | None) -> Tensor:
        emb = self.time(timestep_embedding(t, self.emb_dim))
        if self.latent_dim:
            if cond is None or cond.z is None:
                raise ValueError("this UNet is conditioned on z; pass Condition(z=...)")
            z_emb = self.z_embed(cond.z)
            if cond.drop is not None:
                z_emb = torch.where(cond.drop[:, None], self.null_z.expand_as(z_emb), z_emb)
            emb = emb + z_emb
        if self.vector_dim:
            if cond is None or cond.vector is None:
                raise ValueError(f"this UNet takes a {self.vector_dim}-d condition vector; pass Condition(vector=...)")
            vector = cond.vector if cond.drop is None else cond.vector * (~cond.drop).to(cond.vector.dtype)[:, None]
            emb = emb + self.vector_embed(vector)
        return emb

    def forward(self, x_t: Tensor, t: Tensor, cond: Condition | None = None, features: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """``x_t [B, C, H, W]``, ``t [B]`` -> ``[B, C, H, W]``; with ``features``, also ``{"mid": middle block output
        [B, C_last, h, w], "out": last up block output [B, C_0, H, W]}`` (for heads reading the backbone)."""
        emb = self.embed(t, cond)
        h = x_t
        if self.cond_channels:
            if cond is None or cond.image is None:
                raise ValueError(f"this UNet takes a {self.cond_channels}-channel conditioning image; pass Condition(image=...)")
            image = cond.image if cond.drop is None else cond.image * (~cond.drop).to(cond.image.dtype)[:, None, None, None]
            h = torch.cat([h, image], dim=1)
        if self.patch_size > 1:
            if h.shape[-1] % self.patch_size or h.shape[-2] % self.patch_size:
                raise ValueError(f"an image of {h.shape[-2]}x{h.shape[-1]} pixels does not divide into {self.patch_size}-pixel patches")
            h = F.pixel_unshuffle(h, self.patch_size)
        h = self.stem(h)
        skips = []
        for i, block in enumerate(self.down):
            h = self.down_attn[i](block(h, emb))
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid(h, emb)
        mid = h
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        out = self.out(h)
        if self.patch_size > 1:
            out = F.pixel_shuffle(out, self.patch_size)
        return (out, {"mid": mid, "out": h}) if features else out
