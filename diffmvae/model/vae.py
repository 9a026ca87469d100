"""The mixture-of-subsets multimodal VAE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from decoders import Decoder, Observed, SamplingSettings
from diffmvae.io import DiffMVAEError
from diffmvae.model.base import LatentPrior, MultimodalModel
from diffmvae.model.composition import Composition
from diffmvae.model.elbo import ELBORecord, split_term
from diffmvae.model.posterior import mixture_weights, product_of_experts, reparameterize, stratified_subset_choice
from diffmvae.model.subsets import SubsetFamily, subset_mask
from encoders import Encoder
from priors import StandardNormalPrior, kl_standard_normal


class MultimodalVAE(MultimodalModel):
    """Mixture-of-subsets multimodal VAE (MoPoE by default; MVAE with ``poe``, MMVAE with ``moe``).

    Args:
        encoders: one :class:`encoders.Encoder` per modality name; their names are the model's modalities.
        decoders: :class:`decoders.Decoder` s keyed by modality name (a decoder of that modality) or by any name for
            a decoder that declares its ``modalities`` (one decoder serving several).
        latent_dim: size ``d`` of ``z``; every encoder must produce it.
        subsets: the subset family of the mixture posterior.
    """

    has_latent = True

    def __init__(
        self,
        encoders: Mapping[str, Encoder],
        decoders: Mapping[str, Decoder],
        latent_dim: int,
        subsets: SubsetFamily = "mopoe",
    ) -> None:
        super().__init__()
        if not encoders:
            raise ValueError("a multimodal VAE needs at least one modality")
        for name, enc in encoders.items():
            if enc.latent_dim != latent_dim:
                raise ValueError(f"encoder {name!r} has latent_dim {enc.latent_dim}, the model {latent_dim}")
        self.modalities: tuple[str, ...] = tuple(encoders)
        self.latent_dim = latent_dim
        self.encoders = nn.ModuleDict(encoders)
        self.decoder_of = self.bind_decoders(decoders)
        self.decoders = nn.ModuleDict(decoders)
        self.prior = StandardNormalPrior(latent_dim)
        self.register_buffer("subset_mask", subset_mask(len(self.modalities), subsets), persistent=False)

    def device_of(self) -> torch.device:
        return self.subset_mask.device

    # ------------------------------------------------------------------ encoding
    def experts(self, x: Mapping[str, Any], present: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Encode every modality found in ``x``.

        Args:
            x: modality name -> batch; modalities absent from ``x`` count as missing for every example.
            present: optional ``[B, M]`` bool, which examples have each modality (incomplete data).
        Returns:
            ``(mu, logvar, present)``: ``[M, B, d]``, ``[M, B, d]``, ``[B, M]``.
        """
        given = [m for m in self.modalities if m in x]
        if not given:
            raise ValueError("no modality given; encoding needs at least one")
        encoded = {m: self.encoders[m](x[m]) for m in given}
        zeros = torch.zeros_like(encoded[given[0]][0])  # placeholder expert, masked out of every PoE
        mu = torch.stack([encoded[m][0] if m in encoded else zeros for m in self.modalities])
        logvar = torch.stack([encoded[m][1] if m in encoded else zeros for m in self.modalities])
        return mu, logvar, self.observe(x, present, mu.shape[1], mu.device).present

    def posterior(self, x: Mapping[str, Any], present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``q(z|x_A)``: the PoE of the experts of every modality in ``x`` (and ``present``) with the prior.

        Returns ``(mu, logvar)``, each ``[B, d]``.
        """
        self.check_names(list(x))
        mu, logvar, present = self.experts(x, present)
        mu_a, logvar_a = product_of_experts(mu, logvar, present[None])
        return mu_a[0], logvar_a[0]

    def subset_posteriors(self, x: Mapping[str, Any], present: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Every subset's posterior at once: ``(mu [S, B, d], logvar [S, B, d], omega [S, B])``."""
        mu, logvar, present = self.experts(x, present)
        mask = self.subset_mask[:, None, :] & present[None, :, :]
        mu_s, logvar_s = product_of_experts(mu, logvar, mask)
        return mu_s, logvar_s, mixture_weights(mask)

    # ------------------------------------------------------------------ ELBO
    def elbo(self, x: Mapping[str, Any], present: Tensor | None = None, *, generator: torch.Generator | None = None,
             skip: frozenset[str] = frozenset()) -> ELBORecord:
        """The negative mixture-of-subsets ELBO's terms (Wesego & Rooshenas 2024 eq. 17), per example.

        KL is analytic for every subset; the reconstruction expectation uses one subset per example, drawn
        from the mixture weights with :func:`stratified_subset_choice`, so the decoder cost of a step does not
        grow with ``2^M``. Every decoder sees the whole observed example; ``skip`` holds term kinds to leave out
        (:func:`decoders.base.skipped`).
        """
        mu, logvar, present = self.experts(x, present)
        mask = self.subset_mask[:, None, :] & present[None, :, :]
        mu_s, logvar_s = product_of_experts(mu, logvar, mask)
        omega = mixture_weights(mask)
        kl = (omega * kl_standard_normal(mu_s, logvar_s)).sum(dim=0)
        subset = stratified_subset_choice(omega, generator)
        rows = torch.arange(subset.shape[0], device=subset.device)
        z = reparameterize(mu_s[subset, rows], logvar_s[subset, rows], generator)
        example = Observed(dict(x), present, self.modalities)
        terms = {}
        for key, dec in self.decoders.items():
            if not any(m in x for m in dec.modalities):
                continue
            for name, value in dec.loss(z, example, generator=generator, skip=skip).items():
                modality, _ = split_term(name)
                if modality not in dec.modalities:
                    raise ValueError(f"decoder {key!r} returned term {name!r}; its terms must be named '<one of {dec.modalities}>/<kind>'")
                terms[name] = torch.where(example.mask(modality), value, torch.zeros_like(value))
        return ELBORecord(terms={**terms, "kl": kl}, present=present, subset=subset)

    # ------------------------------------------------------------------ generation
    def sample_latent(
        self,
        given: Mapping[str, Any] | None = None,
        n: int | None = None,
        *,
        generator: torch.Generator | None = None,
        prior: LatentPrior | None = None,
    ) -> Tensor:
        """``z ~ q(z|x_A)`` for the observed modalities ``given``, or ``z ~ prior`` when none.

        Returns ``[B, d]`` (``B`` from ``given``, else ``n``).
        """
        if given:
            mu, logvar = self.posterior(given)
            return reparameterize(mu, logvar, generator)
        if n is None or n < 1:
            raise ValueError(f"unconditional sampling needs n >= 1, got {n}")
        return (prior or self.prior).sample(n, generator=generator, device=self.device_of())

    def generate(
        self,
        given: Mapping[str, Any] | None = None,
        n: int | None = None,
        *,
        sampling: SamplingSettings = SamplingSettings(),
        generator: torch.Generator | None = None,
        prior: LatentPrior | None = None,
        composition: Composition | None = None,
    ) -> dict[str, Any]:
        """Conditional generation from any subset: observed modalities are returned as given, the missing ones
        decoded from ``z ~ q(z|x_given)`` (decoders also see ``given``); with nothing given, every modality from
        ``z ~ prior``. ``sampling`` says how the diffusion decoders sample. With a ``composition``, the diffusion
        decoders instead compose one source per subset it names (each conditioned on its own ``z_s ~ q(z|x_s)``,
        Unite-and-Conquer within the model); feed-forward decoders still decode the PoE latent."""
        given = dict(given or {})
        self.check_names(list(given))
        z = self.sample_latent(given, n, generator=generator, prior=prior)
        if composition is None or not given:
            return {**given, **self.decode(z, given=given, sampling=sampling, generator=generator)}
        sources = composition.resolve([m for m in self.modalities if m in given])
        zs = [reparameterize(*self.posterior({m: given[m] for m in subset}), generator) for subset, _ in sources]
        weights = [w for _, w in sources]
        names = [m for m in self.modalities if m not in given]
        observed = self.observe(given, batch=z.shape[0], device=z.device)
        out: dict[str, Tensor] = {}
        for dec in self.decoders.values():
            targets = [m for m in dec.modalities if m in names]
            if not targets:
                continue
            if dec.can_compose:
                out.update(dec.generate_composed(zs, weights, targets=targets, sampling=sampling, generator=generator))
            else:
                out.update(dec.generate(z, observed, targets=targets, sampling=sampling, generator=generator))
        return {**given, **{m: out[m] for m in names}}

    def check_composition(self, composition: Composition, given: Sequence[str], sampling: SamplingSettings = SamplingSettings()) -> None:
        """One line (``DiffMVAEError``) unless ``composition`` can generate the modalities missing from ``given``: its
        sources must be observed, some missing modality must have a diffusion decoder, those decoders need condition
        dropout wherever the rule uses their null prediction, and sampling must be exact with no separate guidance."""
        self.check_names(list(given))
        if not isinstance(composition.sources, str):
            unknown = [m for s in composition.sources for m in s if m not in self.modalities]
            if unknown:
                raise DiffMVAEError(f"unknown modality {unknown[0]!r} in --compose; give each, each+poe, poe, or subsets of "
                                    f"{', '.join(self.modalities)} like m0;m1+m2")
        sources = composition.resolve([m for m in self.modalities if m in given])
        missing = [m for m in self.modalities if m not in given]
        decoders = {key: dec for key, dec in self.decoders.items() if dec.can_compose and any(m in missing for m in dec.modalities)}
        if not decoders:
            raise DiffMVAEError("--compose needs a diffusion decoder for a generated modality; this model decodes "
                                f"{', '.join(missing)} feed-forward")
        if not sampling.exact or sampling.guidance != 1.0:
            raise DiffMVAEError("--compose samples exactly with the sources' weights: leave --start at 1 and --guidance at 1")
        if sum(w for _, w in sources) != 1.0:
            for key, dec in decoders.items():
                if not dec.can_drop_condition:
                    raise DiffMVAEError(f"decoder {key!r} was trained without condition dropout (cond_dropout 0), so it has no "
                                        "unconditional prediction; a composition whose weights do not sum to 1 needs one")
