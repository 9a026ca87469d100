"""A model that is one joint decoder and no latent: MT-Diffusion trained and sampled on its own (Chen et al. 2024), through the
same TrainingModule, data, callbacks and commands as the multimodal VAEs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from decoders import Decoder, Observed, SamplingSettings
from diffmvae.model.base import LatentPrior, MultimodalModel, batch_size
from diffmvae.model.composition import Composition
from diffmvae.model.elbo import ELBORecord, split_term


class JointDiffusion(MultimodalModel):
    """Args:
        decoder: a joint decoder with ``latent_dim = 0`` (an :class:`~decoders.mt_diffusion.MTDiffusionDecoder`).
        modalities: the model's modalities in order (default: the decoder's targets, then those it only reads).
    """

    prior = None

    def __init__(self, decoder: Decoder, modalities: list[str] | None = None) -> None:
        super().__init__()
        self.modalities = tuple(modalities) if modalities else (*decoder.modalities, *(m for m in decoder.reads if m not in decoder.modalities))
        if decoder.latent_dim:
            raise ValueError(f"JointDiffusion has no latent; its decoder must have latent_dim 0, not {decoder.latent_dim}")
        self.decoder_of = self.bind_decoders({"joint": decoder}, require_all=False)  # a modality only aggregated is given, never generated
        self.decoders = nn.ModuleDict({"joint": decoder})

    def can_generate(self, given) -> bool:
        return all(m in self.decoders["joint"].modalities for m in self.modalities if m not in given)

    def elbo(self, x: Mapping[str, Any], present: Tensor | None = None, *, generator: torch.Generator | None = None,
             skip: frozenset[str] = frozenset()) -> ELBORecord:
        """The decoder's terms (eq. 6 for MT-Diffusion), masked by each modality's presence."""
        example = self.observe(x, present, batch_size(x), self.device_of())
        terms = {}
        for name, value in self.decoders["joint"].loss(None, example, generator=generator, skip=skip).items():
            modality, _ = split_term(name)
            terms[name] = torch.where(example.mask(modality), value, torch.zeros_like(value))
        return ELBORecord(terms=terms, present=example.present)

    def generate(self, given: Mapping[str, Any] | None = None, n: int | None = None, *, sampling: SamplingSettings = SamplingSettings(),
                 generator: torch.Generator | None = None, prior: LatentPrior | None = None,
                 composition: Composition | None = None) -> dict[str, Any]:
        """Generate every modality not in ``given`` (with nothing given: joint unconditional generation of ``n``).
        ``prior`` is unused (there is no latent); a ``composition`` is refused in one line (:meth:`check_composition`)."""
        given = dict(given or {})
        self.check_names(list(given))
        if composition is not None:
            self.check_composition(composition, list(given), sampling)
        if not given and (n is None or n < 1):
            raise ValueError(f"unconditional sampling needs n >= 1, got {n}")
        decoder = self.decoders["joint"]
        missing = [m for m in self.modalities if m not in given]
        cannot = [m for m in missing if m not in decoder.modalities]
        if cannot:
            raise ValueError(f"this model cannot generate {cannot[0]!r} (no head predicts it); give it")
        observed: Observed = self.observe(given, batch=batch_size(given) if given else n, device=self.device_of())
        return {**given, **decoder.generate(None, observed, targets=missing, sampling=sampling, generator=generator)}
