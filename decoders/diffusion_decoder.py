"""Diffusion decoders ``p(x_m | z)`` for image modalities: a :class:`~decoders.unet.UNet2d` backbone,
a :class:`~decoders.diffusion.DiffusionProcess`, and how ``z`` reaches the backbone.

``conditioning`` (measured on PolyDigits: FiLM alone lets a small decoder ignore
``z``):

* ``film``: ``z`` only through the UNet's embedding (adaptive group norm), as the paper describes;
* ``mean_channels``: also the decoder's own feed-forward mean image ``mean(z)`` as extra input channels;
* ``residual``: the UNet sees ``z`` and the mean and models ``x - mean(z)`` (DiffuseVAE-style). A shift by a
  function of ``z`` keeps this a conditional diffusion model of ``x`` given ``z``, and the decoder re-expresses
  every prediction for ``x`` itself (:func:`~decoders.diffusion.parameterization.shift_prediction`), so the
  process, the samplers and any composition of predictions work in image coordinates for every conditioning.

With a mean head, the decoder adds the head's own likelihood term ``<m>/mean_nll`` (``-log p(x | mean(z))``), so
the head trains inside the same ELBO; with ``mean_head_loss: false`` it contributes only its diffusion term, one
term per modality as eq. 17 of Wesego & Rooshenas (2024) has it, and the head learns through that term. One decoder may serve several image modalities of the same shape
(``modalities``): one UNet for all of them (it tells them apart by their mean images), one mean head each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from decoders.base import Decoder, Observed, skipped
from decoders.composition import Expert, composed_anchor, composed_denoiser, sample_composed
from decoders.diffusion.parameterization import expand, gate_prediction, shift_prediction
from decoders.diffusion.processes import DDPMProcess, DiffusionProcess, VDMProcess
from decoders.feedforward import ConvImageDecoder, ImageLikelihood
from decoders.guidance import cat_conditions
from decoders.random import rand
from decoders.sampling import SamplingSettings
from decoders.unet import Condition, UNet2d

Conditioning = Literal["film", "mean_channels", "residual"]
TargetSampling = Literal["all", "one"]
DIFFUSION_TERMS = {"diffusion": "diffusion", "recon": "diffusion_recon", "prior": "diffusion_prior"}


class DiffusionDecoder(Decoder):
    """Args:
        latent_dim: size of ``z``.
        process: the diffusion process (DDPM / score SDE / VDM); DDPM with DDIM-50 by default.
        image_size, image_channels: the modalities' shape.
        unet_channels, emb_dim, attention_levels, dropout, patch_size: the UNet's sizes (``patch_size`` 2: its first
            level works on 2 x 2 pixel patches, at half the resolution; see :class:`~decoders.unet.UNet2d`).
        conditioning: ``film``, ``mean_channels`` or ``residual`` (default).
        mean_channels, mean_hidden, likelihood, scale: the feed-forward mean head of each modality
            (a :class:`~decoders.ConvImageDecoder`).
        cond_dropout: probability of replacing the condition by the learned null in training (guidance,
            Unite-and-Conquer composition). A dropped example is modelled unconditionally: no ``z``, no mean image,
            and for ``residual`` no shift.
        detach_mean: the backbone sees the mean without back-propagating into the head (the head learns from
            its likelihood only).
        mean_head_loss: whether the mean head adds its own likelihood term ``<m>/mean_nll`` (the default). Without
            it the decoder contributes one term for each modality, its diffusion loss, as eq. 17 of Wesego &
            Rooshenas (2024) has it: the mean head is then part of the decoder's parameterisation and learns only
            through the diffusion term (the mean is not detached, whatever ``detach_mean`` says).
        modalities: the image modalities this decoder generates with one UNet (default: the one it is keyed by).
        target_sampling: ``all`` (default): every example's diffusion term is computed for each of its modalities
            (the UNet runs on ``M B`` images a step). ``one``: for each example one of its modalities is drawn
            uniformly and its diffusion term is weighted by the example's number of modalities, an unbiased
            estimate of the same sum (as the mixture ELBO draws one subset per example): the UNet runs on ``B``
            images a step, and each modality's logged term is that estimate of it.
        residual_gate: for ``residual`` conditioning, the residual's clean estimate is the UNet's times ``alpha_t``,
            so the decoder's estimate of ``x`` tends to the mean image as the noise grows (where the data
            posterior's mean is ``E[x | z]``) and the UNet corrects it in proportion to the signal left in ``x_t``.
            The diffusion term at high noise then trains the mean head as a regression of ``x`` on ``z``, inside
            the one term per modality. Dropped examples (the null model) are not gated.
    """

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
        cond_dropout: float = 0.0,
        detach_mean: bool = True,
        modalities: Sequence[str] = (),
        mean_head_loss: bool = True,
        target_sampling: TargetSampling = "all",
        residual_gate: bool = False,
        patch_size: int = 1,
    ) -> None:
        super().__init__(modalities, latent_dim)
        if conditioning not in ("film", "mean_channels", "residual"):
            raise ValueError(f"unknown conditioning {conditioning!r}; choose film, mean_channels or residual")
        if target_sampling not in get_args(TargetSampling):
            raise ValueError(f"unknown target_sampling {target_sampling!r}; choose all or one")
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        self.process = process if process is not None else DDPMProcess()
        self.conditioning, self.cond_dropout, self.detach_mean = conditioning, cond_dropout, detach_mean and mean_head_loss
        if residual_gate and conditioning != "residual":
            raise ValueError(f"residual_gate gates the residual of 'residual' conditioning; this decoder's conditioning is {conditioning!r}")
        self.mean_head_loss, self.target_sampling, self.residual_gate = mean_head_loss, target_sampling, residual_gate
        self.shape = (image_channels, image_size, image_size)
        self.head_args = (latent_dim, image_channels, image_size, tuple(mean_channels), mean_hidden, likelihood, scale)
        self.mean_heads = nn.ModuleDict()
        for m in self.modalities:
            self.add_head(m)
        self.net = UNet2d(image_channels, latent_dim, image_channels if conditioning != "film" else 0, unet_channels, emb_dim, attention_levels, dropout,
                          patch_size=patch_size)

    def add_head(self, name: str) -> None:
        if self.conditioning != "film":
            self.mean_heads[name] = ConvImageDecoder(*self.head_args[:4], hidden_dim=self.head_args[4], likelihood=self.head_args[5],
                                                     scale=self.head_args[6], modalities=(name,))

    def bind(self, key: str) -> DiffusionDecoder:
        if not self.modalities:
            super().bind(key)
            self.add_head(key)
        return self

    def bound_terms(self) -> frozenset[str]:
        return frozenset(DIFFUSION_TERMS.values()) if self.process.bound else frozenset()

    # ------------------------------------------------------------------ the conditional backbone
    def condition(self, name: str, z: Tensor, drop: Tensor | None = None) -> Condition:
        """The backbone's condition for modality ``name``: ``z``, and for the mean-head conditionings the mean image
        in ``[-1, 1]`` (as input channels, and as the shift of ``residual``)."""
        if self.conditioning == "film":
            return Condition(z=z, drop=drop)
        mean = self.mean_heads[name].mean(z)
        mean = 2 * (mean.detach() if self.detach_mean else mean) - 1
        return Condition(z=z, image=mean, drop=drop, shift=mean if self.conditioning == "residual" else None)

    def backbone(self, x_t: Tensor, t: Tensor, cond: Condition) -> Tensor:
        """The UNet's prediction for ``x`` itself (``x_t`` noised image coordinates): under ``residual`` the UNet
        models ``x - shift`` and its output is re-expressed for ``x``; dropped examples have no shift."""
        shift = effective_shift(cond)
        if shift is None:
            return self.net(x_t, t, cond)
        alpha, sigma = self.process.alpha_sigma(t)
        y_t = x_t - expand(alpha, x_t) * shift
        out = self.net(y_t, t, cond)
        if self.residual_gate:
            out = gate_prediction(self.process.prediction, out, y_t, alpha, sigma, None if cond.drop is None else ~cond.drop)
        return shift_prediction(self.process.prediction, out, shift, alpha, sigma)

    # ------------------------------------------------------------------ ELBO terms
    def loss(self, z: Tensor, example: Observed, *, generator: torch.Generator | None = None,
             skip: frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """``<m>/mean_nll`` (the mean head's likelihood) and ``<m>/diffusion`` (plus ``<m>/diffusion_recon`` and
        ``<m>/diffusion_prior`` for VDM) for every target in ``example``; all targets share one UNet call."""
        targets = [m for m in self.modalities if m in example]
        terms = {f"{m}/mean_nll": self.mean_heads[m].nll(z, example[m]) for m in targets
                 if self.mean_head_loss and m in self.mean_heads and not skipped("mean_nll", skip)}
        if not targets or skipped("diffusion", skip):
            return terms
        batch = z.shape[0]
        rows, count = draw_rows(targets, example, generator) if self.target_sampling == "one" and len(targets) > 1 else (None, None)
        undrawn = [] if rows is None else [m for m, r in zip(targets, rows) if not r.numel()]
        if undrawn:  # a target no example drew gets zero terms, and no UNet input
            targets, rows = map(list, zip(*[(m, r) for m, r in zip(targets, rows) if r.numel()]))
        conds, xs = [], []
        for i, m in enumerate(targets):
            z_m, x_m = (z, example[m]) if rows is None else (z[rows[i]], example[m][rows[i]])
            drop = rand((z_m.shape[0],), generator, z.device) < self.cond_dropout if self.cond_dropout > 0 else None
            conds.append(self.condition(m, z_m, drop))
            xs.append(2 * x_m - 1)
        cond = cat_conditions(conds)
        out = self.process.loss(self.backbone, torch.cat(xs), cond, anchor=effective_shift(cond), generator=generator)
        sizes = [x.shape[0] for x in xs]
        for kind, value in out.items():
            for i, (m, part) in enumerate(zip(targets, value.split(sizes))):
                if rows is not None:  # the drawn examples' terms, weighted by their number of modalities; zero elsewhere
                    part = part.new_zeros(batch).index_put((rows[i],), part * count[rows[i]].to(part.dtype))
                terms[f"{m}/{DIFFUSION_TERMS[kind]}"] = part
            terms.update({f"{m}/{DIFFUSION_TERMS[kind]}": value.new_zeros(batch) for m in undrawn})
        return terms

    def bits_per_dim(self, z: Tensor, example: Observed, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if not self.process.bound:
            return {}
        out = {}
        for m in (m for m in self.modalities if m in example):
            cond, x = self.condition(m, z), 2 * example[m] - 1
            out[m] = VDMProcess.bits_per_dim(self.process.loss(self.backbone, x, cond, anchor=cond.shift, generator=generator), x)
        return out

    # ------------------------------------------------------------------ generation
    def check_sampling(self, sampling: SamplingSettings) -> None:
        if sampling.unconditional is not None:
            raise ValueError(f"unconditional {sampling.unconditional!r} applies to MT-Diffusion decoders; this decoder has no "
                             "aggregated modalities")
        if sampling.guidance != 1.0 and self.cond_dropout <= 0:
            raise ValueError(f"guidance {sampling.guidance} needs a decoder trained with cond_dropout > 0 (it has {self.cond_dropout}), "
                             "or the null condition is untrained")
        if not sampling.exact and self.conditioning == "film":
            raise ValueError(f"start {sampling.start} begins sampling from the decoder's mean image, and a 'film' decoder has none")
        self.process.check_sampler(sampling.sampler_for(self.process.sampler))

    def describe_sampling(self, sampling: SamplingSettings) -> dict[str, Any]:
        return {**sampling.sampler_for(self.process.sampler).describe(), "guidance": sampling.guidance, "start": sampling.start,
                "exact": sampling.exact}

    def generate(self, z: Tensor, given: Observed, *, targets: Sequence[str], sampling: SamplingSettings = SamplingSettings(),
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Samples ``[B, C, H, W]`` in ``[0, 1]`` of every target given ``z`` (all targets in one batched sampler
        run), with classifier-free guidance when ``sampling.guidance != 1`` (the one-source composition). The reverse
        process starts from the model's prior (``start = 1``) or, for a refinement, from the mean image noised to
        ``sampling.start``."""
        self.check_sampling(sampling)
        if not targets:
            return {}
        expert = self.expert(targets, [z], [sampling.guidance])
        # The composed prior at t = 1 is centred on the weighted means (w x the mean under guidance w; the null has none).
        anchor = composed_anchor([expert]) if sampling.exact else expert.conds[0].image
        denoise = composed_denoiser([expert], clip=(-1.0, 1.0))
        x = self.process.sample(denoise, (len(targets) * z.shape[0], *self.shape), sampler=sampling.sampler_for(self.process.sampler),
                                generator=generator, device=z.device, start=sampling.start, anchor=anchor, dtype=z.dtype)
        return self.split_samples(targets, x, z.shape[0])

    # ------------------------------------------------------------------ Unite-and-Conquer
    @property
    def can_compose(self) -> bool:
        return True

    @property
    def can_drop_condition(self) -> bool:
        return self.cond_dropout > 0

    def expert(self, targets: Sequence[str], zs: Sequence[Tensor], weights: Sequence[float], reliability: float = 1.0,
               name: str = "model") -> Expert:
        """This decoder as one :class:`~decoders.composition.Expert` of a composition: one source per latent in
        ``zs`` (each ``[B, d]``; its condition is ``z`` and, for the mean-head conditionings, its own mean image),
        weighted by ``weights``; all ``targets`` are batched (``len(targets) B`` examples per source)."""
        keep = torch.zeros(zs[0].shape[0], dtype=torch.bool, device=zs[0].device) if self.cond_dropout > 0 else None
        conds = [cat_conditions([self.condition(m, z, keep) for m in targets]) for z in zs]
        return Expert(self.backbone, self.process, conds, tuple(weights), reliability, anchors=[c.shift for c in conds],
                      can_drop=self.cond_dropout > 0, name=name)

    def generate_composed(self, zs: Sequence[Tensor], weights: Sequence[float], *, targets: Sequence[str],
                          sampling: SamplingSettings = SamplingSettings(), generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Samples of ``targets`` from the composition of one source per latent in ``zs`` (Unite-and-Conquer within
        one model: e.g. each observed modality's own ``z_i ~ q(z | x_i)``) with this decoder's null prediction."""
        if not targets:
            return {}
        expert = self.expert(targets, zs, weights)
        x = sample_composed([expert], (len(targets) * zs[0].shape[0], *self.shape), sampling=sampling, generator=generator,
                            device=zs[0].device, dtype=zs[0].dtype)
        return self.split_samples(targets, x, zs[0].shape[0])

    @staticmethod
    def split_samples(targets: Sequence[str], x: Tensor, batch: int) -> dict[str, Tensor]:
        """``[len(targets) B, ...]`` samples in ``[-1, 1]`` as ``{target: [B, ...] in [0, 1]}``."""
        return {m: part.add(1).div(2).clamp(0, 1) for m, part in zip(targets, x.split(batch))}


def draw_rows(targets: Sequence[str], example: Observed, generator: torch.Generator | None) -> tuple[list[Tensor], Tensor]:
    """``target_sampling: one``: for each example, one of its present ``targets`` drawn uniformly. Returns the
    drawn examples' indices per target and each example's number of present targets ``[B]``."""
    present = torch.stack([example.mask(m) for m in targets], dim=1)
    count = present.sum(dim=1)
    pick = (rand((present.shape[0],), generator, present.device) * count).floor().long()
    chosen = present & (present.long().cumsum(dim=1) - 1 == pick[:, None])
    return [chosen[:, i].nonzero().squeeze(1) for i in range(len(targets))], count


def effective_shift(cond: Condition) -> Tensor | None:
    """The residual shift of each example, zero where the condition is dropped (the null model is unconditional)."""
    if cond.shift is None or cond.drop is None:
        return cond.shift
    return cond.shift * (~cond.drop).to(cond.shift.dtype)[:, None, None, None]
