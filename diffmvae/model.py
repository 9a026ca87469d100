"""The multimodal VAE: per-modality encoders and decoders composed around one shared latent ``z``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from decoders import Decoder
from diffmvae.elbo import ELBORecord
from diffmvae.posterior import mixture_weights, product_of_experts, reparameterize, stratified_subset_choice
from diffmvae.subsets import SubsetFamily, subset_mask
from encoders import Encoder
from priors import StandardNormalPrior, kl_standard_normal


class LatentPrior(Protocol):
    """What unconditional generation needs of a prior over ``z``: :class:`~priors.StandardNormalPrior`,
    :class:`~priors.ScorePrior`."""

    def sample(self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor: ...


class MultimodalVAE(nn.Module):
    """Mixture-of-subsets multimodal VAE (MoPoE by default; MVAE with ``poe``, MMVAE with ``moe``).

    Args:
        encoders: one :class:`encoders.Encoder` per modality name.
        decoders: one :class:`decoders.Decoder` per modality name (feed-forward or diffusion).
        latent_dim: size ``d`` of ``z``; every encoder must produce it.
        subsets: the subset family of the mixture posterior.
    """

    def __init__(
        self,
        encoders: Mapping[str, Encoder],
        decoders: Mapping[str, Decoder],
        latent_dim: int,
        subsets: SubsetFamily = "mopoe",
    ) -> None:
        super().__init__()
        if set(encoders) != set(decoders):
            raise ValueError(f"encoders {sorted(encoders)} and decoders {sorted(decoders)} name different modalities")
        if not encoders:
            raise ValueError("a multimodal VAE needs at least one modality")
        for name, enc in encoders.items():
            if enc.latent_dim != latent_dim:
                raise ValueError(f"encoder {name!r} has latent_dim {enc.latent_dim}, the model {latent_dim}")
        self.modalities: tuple[str, ...] = tuple(encoders)
        self.latent_dim = latent_dim
        self.encoders = nn.ModuleDict(encoders)
        self.decoders = nn.ModuleDict({m: decoders[m] for m in self.modalities})
        self.prior = StandardNormalPrior(latent_dim)
        self.register_buffer("subset_mask", subset_mask(len(self.modalities), subsets), persistent=False)

    # ------------------------------------------------------------------ encoding
    def _check_names(self, names: Sequence[str]) -> None:
        unknown = [m for m in names if m not in self.modalities]
        if unknown:
            raise KeyError(f"unknown modality {unknown[0]!r}; this model has {', '.join(self.modalities)}")

    def experts(self, x: Mapping[str, Tensor], present: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
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
        observed = torch.tensor([m in x for m in self.modalities], device=mu.device).expand(mu.shape[1], -1)
        present = observed if present is None else present.to(mu.device, torch.bool) & observed
        return mu, logvar, present

    def posterior(self, x: Mapping[str, Tensor], present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``q(z|x_A)``: the PoE of the experts of every modality in ``x`` (and ``present``) with the prior.

        Returns ``(mu, logvar)``, each ``[B, d]``.
        """
        self._check_names(list(x))
        mu, logvar, present = self.experts(x, present)
        mu_a, logvar_a = product_of_experts(mu, logvar, present[None])
        return mu_a[0], logvar_a[0]

    def subset_posteriors(self, x: Mapping[str, Tensor], present: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Every subset's posterior at once: ``(mu [S, B, d], logvar [S, B, d], omega [S, B])``."""
        mu, logvar, present = self.experts(x, present)
        mask = self.subset_mask[:, None, :] & present[None, :, :]
        mu_s, logvar_s = product_of_experts(mu, logvar, mask)
        return mu_s, logvar_s, mixture_weights(mask)

    # ------------------------------------------------------------------ ELBO
    def elbo(
        self, x: Mapping[str, Tensor], present: Tensor | None = None, generator: torch.Generator | None = None
    ) -> ELBORecord:
        """The negative mixture-of-subsets ELBO's terms (seed 003 eq. 17), per example.

        KL is analytic for every subset; the reconstruction expectation uses one subset per example, drawn
        from the mixture weights with :func:`stratified_subset_choice`, so the decoder cost of a step does not
        grow with ``2^M``.
        """
        mu, logvar, present = self.experts(x, present)
        mask = self.subset_mask[:, None, :] & present[None, :, :]
        mu_s, logvar_s = product_of_experts(mu, logvar, mask)
        omega = mixture_weights(mask)
        kl = (omega * kl_standard_normal(mu_s, logvar_s)).sum(dim=0)
        subset = stratified_subset_choice(omega, generator)
        rows = torch.arange(subset.shape[0], device=subset.device)
        z = reparameterize(mu_s[subset, rows], logvar_s[subset, rows], generator)
        nll = {}
        for i, m in enumerate(self.modalities):
            if m in x:
                dec: Decoder = self.decoders[m]
                nll[m] = dec.loss(x[m], z) * present[:, i].to(z.dtype)
        return ELBORecord(nll=nll, kl=kl, subset=subset, present=present)

    # ------------------------------------------------------------------ generation
    def sample_latent(
        self,
        given: Mapping[str, Tensor] | None = None,
        n: int | None = None,
        *,
        generator: torch.Generator | None = None,
        prior: LatentPrior | None = None,
    ) -> Tensor:
        """``z ~ q(z|x_A)`` for the observed modalities ``given`` (DESIGN §2.5), or ``z ~ prior`` when none.

        Returns ``[B, d]`` (``B`` from ``given``, else ``n``).
        """
        if given:
            mu, logvar = self.posterior(given)
            return reparameterize(mu, logvar, generator)
        if n is None or n < 1:
            raise ValueError(f"unconditional sampling needs n >= 1, got {n}")
        device = self.subset_mask.device
        return (prior or self.prior).sample(n, generator=generator, device=device)

    def configure_sampling(self, steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
                           start: float | None = None) -> list[str]:
        """Override the sampler, its steps, the guidance scale and/or the start time of every diffusion decoder;
        returns their modality names. An unknown sampler, ``steps < 1``, guidance without condition dropout or a
        start outside (0, 1] raises ``ValueError`` naming it."""
        names = [m for m in self.modalities if self.decoders[m].is_diffusion]
        for m in names:
            self.decoders[m].configure_sampling(steps=steps, sampler=sampler, guidance=guidance, start=start)
        return names

    def decode(self, z: Tensor, names: Sequence[str] | None = None, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Generate the modalities ``names`` (default: all) from ``z [B, d]``."""
        names = self.modalities if names is None else names
        self._check_names(names)
        return {m: self.decoders[m].generate(z, generator=generator) for m in names}

    def generate(
        self,
        given: Mapping[str, Tensor] | None = None,
        n: int | None = None,
        *,
        generator: torch.Generator | None = None,
        prior: LatentPrior | None = None,
    ) -> dict[str, Tensor]:
        """Conditional generation from any subset: observed modalities are returned as given, the missing
        ones decoded from ``z ~ q(z|x_given)``; with nothing given, every modality from ``z ~ prior``."""
        given = dict(given or {})
        self._check_names(list(given))
        z = self.sample_latent(given, n, generator=generator, prior=prior)
        missing = [m for m in self.modalities if m not in given]
        return {**given, **self.decode(z, missing, generator=generator)}
