"""The multimodal VAE: per-modality encoders and decoders composed around one shared latent ``z``.

:class:`MultimodalModel` is the interface the trainer, sampling and evaluation use; :class:`MultimodalVAE` is the
mixture-of-subsets VAE of Wesego & Rooshenas 2024 that implements it. Decoders follow :mod:`decoders.base`: the model binds each
to its modalities, hands it the observed example, masks its named terms by presence, and never looks inside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from decoders import Decoder, Observed, SamplingSettings
from diffmvae.io import DiffMVAEError
from diffmvae.model.composition import Composition
from diffmvae.model.elbo import ELBORecord


class LatentPrior(Protocol):
    """What unconditional generation needs of a prior over ``z``: :class:`~priors.StandardNormalPrior`,
    :class:`~priors.ScorePrior`."""

    def sample(self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor: ...


def batch_size(x: Mapping[str, Any]) -> int:
    """The batch size of a batch dict whose values are tensors or dicts of tensors (text)."""
    value = next(iter(x.values()))
    return (next(iter(value.values())) if isinstance(value, Mapping) else value).shape[0]


class MultimodalModel(nn.Module):
    """The interface of every model the library trains, samples and evaluates (a :class:`MultimodalVAE`, or a joint
    diffusion model): modality names, decoders keyed by name, and

    * :meth:`elbo` ``(x, present, generator=, skip=) -> ELBORecord``, the named per-example terms of its objective;
    * :meth:`generate` ``(given, n, sampling=, generator=, prior=) -> {modality: tensor}``;
    * :meth:`check_sampling` / :meth:`describe_sampling`, what its decoders do with a :class:`SamplingSettings`.
    """

    modalities: tuple[str, ...]
    decoders: nn.ModuleDict
    #: ``{modality: key in decoders}``, set by :meth:`bind_decoders`.
    decoder_of: dict[str, str]
    #: Whether the model has a shared latent ``z`` (:meth:`posterior`, :meth:`sample_latent`, a prior over ``z``); a
    #: joint diffusion model has none.
    has_latent: bool = False
    #: The size of ``z`` (0 without a latent).
    latent_dim: int = 0
    #: The prior over ``z`` of unconditional generation (``None`` without a latent; set by each subclass, since a
    #: class default would hide a prior registered as a submodule).
    prior: LatentPrior | None

    def elbo(self, x: Mapping[str, Any], present: Tensor | None = None, *, generator: torch.Generator | None = None,
             skip: frozenset[str] = frozenset()) -> ELBORecord:  # pragma: no cover - abstract
        raise NotImplementedError

    def generate(self, given: Mapping[str, Any] | None = None, n: int | None = None, *, sampling: SamplingSettings = SamplingSettings(),
                 generator: torch.Generator | None = None, prior: LatentPrior | None = None,
                 composition: Composition | None = None) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def decoder_for(self, modality: str) -> Decoder:
        """The decoder that generates ``modality``; one line (``DiffMVAEError``) when none does."""
        self.check_names([modality])
        if modality not in self.decoder_of:
            raise DiffMVAEError(f"no decoder of this model generates {modality!r}")
        return self.decoders[self.decoder_of[modality]]

    def posterior(self, x: Mapping[str, Any], present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``q(z | x)``: ``(mu, logvar)``, each ``[B, d]`` (models with :attr:`has_latent`)."""
        raise NotImplementedError(f"{type(self).__name__} has no latent")

    def sample_latent(self, given: Mapping[str, Any] | None = None, n: int | None = None, *, generator: torch.Generator | None = None,
                      prior: LatentPrior | None = None) -> Tensor:
        """``z ~ q(z | x_given)``, or ``z ~ prior`` with nothing given (models with :attr:`has_latent`)."""
        raise NotImplementedError(f"{type(self).__name__} has no latent")

    def check_composition(self, composition: Composition, given: Sequence[str], sampling: SamplingSettings = SamplingSettings()) -> None:
        """One line (``DiffMVAEError``) unless this model can compose its missing modalities from ``given``."""
        raise DiffMVAEError(f"{type(self).__name__} does not compose predictions from several sources (--compose)")

    def bind_decoders(self, decoders: Mapping[str, Decoder], *, require_all: bool = True) -> dict[str, str]:
        """Bind every decoder to its modalities and return ``{modality: decoder key}``; each modality is served by at
        most one decoder (exactly one with ``require_all``), and every modality a decoder serves or reads must exist."""
        owner: dict[str, str] = {}
        for key, dec in decoders.items():
            dec.bind(key)
            for m in (*dec.modalities, *dec.reads):
                if m not in self.modalities:
                    raise ValueError(f"decoder {key!r} names modality {m!r}; the model has {', '.join(self.modalities)}")
            for m in dec.modalities:
                if m in owner:
                    raise ValueError(f"modality {m!r} is generated by two decoders, {owner[m]!r} and {key!r}")
                owner[m] = key
        missing = [m for m in self.modalities if m not in owner]
        if missing and require_all:
            raise ValueError(f"no decoder generates modality {missing[0]!r}")
        return owner

    def observe(self, x: Mapping[str, Any], present: Tensor | None = None, batch: int | None = None,
                device: torch.device | str | None = None) -> Observed:
        """``x`` (and the optional ``[B, M]`` ``present``) as an :class:`~decoders.Observed` over the model's modalities."""
        n = batch if batch is not None else batch_size(x)
        device = device if device is not None else self.device_of()
        observed = torch.tensor([m in x for m in self.modalities], device=device).expand(n, -1)
        present = observed if present is None else present.to(device=device, dtype=torch.bool) & observed
        return Observed(dict(x), present, self.modalities)

    def device_of(self) -> torch.device:
        return next(self.parameters()).device

    def decode(self, z: Tensor, names: Sequence[str] | None = None, *, given: Mapping[str, Any] | None = None,
               sampling: SamplingSettings = SamplingSettings(), generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Generate the modalities ``names`` (default: all not in ``given``) from ``z [B, d]`` and the observed
        modalities ``given``."""
        given = dict(given or {})
        names = [m for m in self.modalities if m not in given] if names is None else list(names)
        self.check_names(names)
        observed = self.observe(given, batch=z.shape[0], device=z.device)
        out: dict[str, Tensor] = {}
        for dec in self.decoders.values():
            targets = [m for m in dec.modalities if m in names]
            if targets:
                out.update(dec.generate(z, observed, targets=targets, sampling=sampling, generator=generator))
        return {m: out[m] for m in names}

    def can_generate(self, given: Sequence[str]) -> bool:
        """Whether every modality not in ``given`` can be generated from ``given`` (a VAE can from any subset)."""
        return True

    def check_names(self, names: Sequence[str]) -> None:
        unknown = [m for m in names if m not in self.modalities]
        if unknown:
            raise KeyError(f"unknown modality {unknown[0]!r}; this model has {', '.join(self.modalities)}")

    def check_sampling(self, sampling: SamplingSettings) -> list[str]:
        """Check ``sampling`` against every decoder (one-line ``ValueError``); returns the modalities whose decoders
        have sampling settings (the diffusion decoders)."""
        for dec in self.decoders.values():
            dec.check_sampling(sampling)
        return list(self.describe_sampling(sampling))

    def describe_sampling(self, sampling: SamplingSettings) -> dict[str, dict[str, Any]]:
        """``{modality: what its decoder does with sampling}`` for decoders with sampling settings."""
        out = {}
        for dec in self.decoders.values():
            described = dec.describe_sampling(sampling)
            if described is not None:
                out.update({m: described for m in dec.modalities})
        return out

    def default_term_weights(self) -> dict[str, float]:
        """The weights decoders declare for their own terms (e.g. MT-Diffusion's head weight), by term name."""
        out: dict[str, float] = {}
        for dec in self.decoders.values():
            out.update(dec.term_weights())
        return out

    def bound_terms(self) -> dict[str, frozenset[str]] | None:
        """``{modality: term kinds whose sum bounds -log p(x_m | z)}``, or ``None`` when some decoder gives no bound."""
        out = {}
        for dec in self.decoders.values():
            kinds = dec.bound_terms()
            if not kinds:
                return None
            out.update({m: kinds for m in dec.modalities})
        return out
