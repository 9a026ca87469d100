"""Diffusion decoders ``p(x_m | z)`` for image modalities (DESIGN §2.3): a :class:`~decoders.unet.UNet2d` backbone,
a :class:`~decoders.diffusion.DiffusionProcess`, and how ``z`` reaches the backbone.

``conditioning`` (measured on PolyDigits in the diffusion-decoder issue: FiLM alone lets a small decoder ignore
``z``):

* ``film``: ``z`` only through the UNet's embedding (adaptive group norm), as the paper describes;
* ``mean_channels``: also the decoder's own feed-forward mean image ``mean(z)`` as extra input channels;
* ``residual``: diffuse ``x - mean(z)``; the UNet sees ``z`` and the mean; a sample is ``mean + residual``
  (DiffuseVAE-style). A shift by a function of ``z`` keeps this a conditional diffusion model of ``x`` given
  ``z``, so the loss still bounds ``-log p(x|z)`` for VDM.

With a mean head, the decoder's loss adds the head's own likelihood term (``mean_weight`` times
``-log p(x | mean(z))``), so the head is trained inside the same ELBO. ``diffusion_weight`` (set by the
LightningModule) switches the diffusion term off during a feed-forward warm-up stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from decoders.base import Decoder
from decoders.diffusion.processes import DiffusionProcess, DDPMProcess, VDMProcess
from decoders.diffusion.samplers import check_start
from decoders.feedforward import ConvImageDecoder, ImageLikelihood
from decoders.guidance import guided
from decoders.unet import Condition, UNet2d

Conditioning = Literal["film", "mean_channels", "residual"]


class DiffusionDecoder(Decoder):
    """Args:
        latent_dim: size of ``z``.
        process: the diffusion process (DDPM / score SDE / VDM); DDPM with DDIM-50 by default.
        image_size, image_channels: the modality's shape.
        unet_channels, emb_dim, attention_levels, dropout: the UNet's sizes.
        conditioning: ``film``, ``mean_channels`` or ``residual`` (default).
        mean_channels, mean_hidden, likelihood, scale, mean_weight: the feed-forward mean head
            (a :class:`~decoders.ConvImageDecoder`) and the weight of its likelihood term.
        cond_dropout: probability of replacing the condition by the learned null in training (guidance,
            Unite-and-Conquer composition).
        detach_mean: the backbone sees the mean without back-propagating into the head (the head learns from
            its likelihood only).
        guidance: classifier-free guidance scale at sampling (:func:`~decoders.guidance.guided`; 1 = none,
            0 = unconditional); anything but 1 needs ``cond_dropout > 0`` so the null condition is learned.
        start: time at which sampling begins (1: from pure noise, an exact sample of the model). Below 1 the
            reverse process starts from the decoder's mean image noised to that time (SDEdit / DiffuseVAE-style
            refinement): closer to the mean (more coherent, less detail), no longer an exact sample of
            ``p(x|z)``. Needs a mean head.
    """

    is_diffusion = True

    def __init__(
        self,
        latent_dim: int,
        process: DiffusionProcess | None = None,
        image_size: int = 28,
        image_channels: int = 3,
        unet_channels: Sequence[int] = (32, 64, 64),
        emb_dim: int = 128,
        attention_levels: Sequence[int] = (),
        dropout: float = 0.0,
        conditioning: Conditioning = "residual",
        mean_channels: Sequence[int] = (32, 16),
        mean_hidden: int = 128,
        likelihood: ImageLikelihood = "laplace",
        scale: float = 0.75,
        mean_weight: float = 1.0,
        cond_dropout: float = 0.0,
        detach_mean: bool = True,
        guidance: float = 1.0,
        start: float = 1.0,
    ) -> None:
        super().__init__()
        if conditioning not in ("film", "mean_channels", "residual"):
            raise ValueError(f"unknown conditioning {conditioning!r}; choose film, mean_channels or residual")
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        self.process = process if process is not None else DDPMProcess()
        self.guidance = self.check_guidance(guidance, cond_dropout)
        self.start = self.check_start(start, conditioning)
        self.conditioning, self.mean_weight, self.cond_dropout, self.detach_mean = conditioning, mean_weight, cond_dropout, detach_mean
        self.shape = (image_channels, image_size, image_size)
        self.mean_head = (
            ConvImageDecoder(latent_dim, image_channels, image_size, mean_channels, mean_hidden, likelihood, scale)
            if conditioning != "film" else None
        )
        self.net = UNet2d(image_channels, latent_dim, image_channels if self.mean_head is not None else 0, unet_channels, emb_dim, attention_levels, dropout)
        self.diffusion_weight = 1.0

    @staticmethod
    def check_guidance(guidance: float, cond_dropout: float) -> float:
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        if guidance != 1.0 and cond_dropout <= 0:
            raise ValueError(f"guidance {guidance} needs a decoder trained with cond_dropout > 0 (it has {cond_dropout}), "
                             "or the null condition is untrained")
        return guidance

    @staticmethod
    def check_start(start: float, conditioning: str) -> float:
        check_start(start)
        if start < 1.0 and conditioning == "film":
            raise ValueError(f"start {start} begins sampling from the decoder's mean image, and a 'film' decoder has none")
        return start

    def configure_sampling(self, steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
                           start: float | None = None) -> None:
        """Override the sampler, its steps, the guidance scale and/or the start time
        (``diffmvae sample --steps/--sampler/--guidance/--start``)."""
        self.process.configure_sampling(steps=steps, sampler=sampler)
        if guidance is not None:
            self.guidance = self.check_guidance(guidance, self.cond_dropout)
        if start is not None:
            self.start = self.check_start(start, self.conditioning)

    def condition(self, z: Tensor, drop: Tensor | None = None) -> tuple[Condition, Tensor | None]:
        """The backbone's condition and the shift of the diffused target (``2 mean - 1`` for ``residual``)."""
        if self.mean_head is None:
            return Condition(z=z, drop=drop), None
        mean = self.mean_head.mean(z)
        mean = 2 * (mean.detach() if self.detach_mean else mean) - 1
        return Condition(z=z, image=mean, drop=drop), (mean if self.conditioning == "residual" else None)

    def loss(self, x: Tensor, z: Tensor) -> Tensor:
        """``diffusion_weight * L_diff(x, z) + mean_weight * (-log p(x | mean(z)))``, ``[B]``."""
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        if self.mean_head is not None and self.mean_weight > 0:
            total = total + self.mean_weight * self.mean_head.loss(x, z)
        if self.diffusion_weight > 0:
            drop = torch.rand(x.shape[0], device=x.device) < self.cond_dropout if self.cond_dropout > 0 else None
            cond, shift = self.condition(z, drop)
            target = 2 * x - 1 if shift is None else 2 * x - 1 - shift
            total = total + self.diffusion_weight * self.process.loss(self.net, target, cond, shift=shift)
        return total

    def generate(self, z: Tensor, *, generator: torch.Generator | None = None, unconditional: bool = False) -> Tensor:
        """A sample ``[B, C, H, W]`` in ``[0, 1]`` given ``z`` (``unconditional``: with the null condition), with
        classifier-free guidance when ``guidance != 1``."""
        drop = torch.full((z.shape[0],), unconditional, device=z.device, dtype=torch.bool)
        cond, shift = self.condition(z, drop if unconditional or self.cond_dropout > 0 else None)
        low, high = (-1.0, 1.0) if shift is None else (-1.0 - shift, 1.0 - shift)
        net = self.net if unconditional or self.guidance == 1.0 else guided(self.net, cond, self.guidance)
        # Truncated sampling starts from the mean: 0 in residual coordinates, the mean image otherwise.
        x_init = None if shift is not None or self.start >= 1.0 else cond.image
        sample = self.process.sample(net, (z.shape[0], *self.shape), cond, clip=(low, high), generator=generator, device=z.device,
                                     start=self.start, x_init=x_init)
        return ((sample if shift is None else sample + shift) + 1).div(2).clamp(0, 1)

    def bits_per_dim(self, x: Tensor, z: Tensor) -> Tensor:
        """Bits per dimension of VDM's bound on the 8-bit image given ``z``, ``[B]`` (VDM processes only)."""
        if not isinstance(self.process, VDMProcess):
            raise TypeError(f"{type(self.process).__name__} gives no likelihood bound; use a VDMProcess")
        cond, shift = self.condition(z)
        target = 2 * x - 1 if shift is None else 2 * x - 1 - shift
        return self.process.bits_per_dim(self.net, target, cond, shift=shift)


def share_backbones(decoders: Mapping[str, Decoder]) -> list[str]:
    """Make every :class:`DiffusionDecoder` in ``decoders`` use the first one's UNet: one backbone trained on all
    modalities, so each optimizer step gives it ``M`` times the examples (the setting of the diffusion-decoder
    issue's measurements). The backbone tells modalities apart by the mean image it is conditioned on, so every
    decoder needs a mean head (``conditioning`` ``residual`` or ``mean_channels``), and the UNets must have the
    same shapes. Returns the names of the sharing decoders; the heads and processes stay per modality."""
    names = [m for m, d in decoders.items() if isinstance(d, DiffusionDecoder)]
    if len(names) < 2:
        raise ValueError(f"share_backbone needs at least two diffusion decoders, got {len(names)}")
    first = decoders[names[0]].net
    shapes = {k: v.shape for k, v in first.state_dict().items()}
    for m in names:
        dec = decoders[m]
        if dec.mean_head is None:
            raise ValueError(f"share_backbone: decoder {m!r} has conditioning 'film', so a shared backbone could not tell its modality "
                             "from the others; use 'residual' or 'mean_channels'")
        if {k: v.shape for k, v in dec.net.state_dict().items()} != shapes:
            raise ValueError(f"share_backbone: decoder {m!r} has a UNet of other sizes than {names[0]!r}'s")
        dec.net = first
    return names
