"""The decoder contract: what the multimodal ELBO and generation need from any decoder.

A decoder models one or several target modalities given the latent ``z`` and, if it wants, the other modalities
observed for the example:

* ``loss(z, example, generator=, skip=) -> {"<modality>/<term>": [B]}``: named per-example terms to minimise
  (``-log p(x|z)`` of a feed-forward likelihood, a diffusion loss and its parts, a mean head's likelihood, an
  auxiliary head's loss ...). ``example`` holds every modality of the batch, the decoder's targets included.
* ``generate(z, given, targets=, sampling=, generator=) -> {modality: sample}``: the targets, given ``z`` and the
  observed modalities ``given`` (the targets are never among them).

Nothing in the model special-cases a decoder class: it binds each decoder to its modalities, routes the example,
masks each term by the presence of the modality that names it, and leaves weighting to the trainer. What the
model, evaluation and Unite-and-Conquer may ask beyond that is declared on :class:`Decoder`, with defaults:

* :attr:`~Decoder.latent_dim`: the size of the ``z`` it reads (0: none, a standalone joint decoder);
* :attr:`~Decoder.can_compose`, :meth:`~Decoder.expert`, :meth:`~Decoder.generate_composed`, :attr:`~Decoder.shape`:
  whether its predictions compose (Unite-and-Conquer) and how;
* :attr:`~Decoder.can_drop_condition`: whether it has an unconditional (null) prediction (guidance, compositions
  whose weights do not sum to 1);
* :attr:`~Decoder.is_text` and :meth:`~Decoder.nll`: ``-log p(x | z)`` of one target's batch, for decoders with an
  exact likelihood (feed-forward and text decoders), always ``nll(z, x)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from decoders.sampling import SamplingSettings


@dataclass(frozen=True)
class Observed:
    """The modalities observed for a batch of examples: what a decoder may condition on besides ``z``.

    Attributes:
        data: modality name -> its batch (a ``[B, ...]`` tensor, or a dict of tensors for text); only modalities
            observed for at least some examples appear.
        present: ``[B, M]`` bool over ``names``; where false the example's entry in ``data`` is a placeholder.
        names: every modality of the model, the columns of ``present``.
    """

    data: Mapping[str, Any]
    present: Tensor
    names: tuple[str, ...]

    def __contains__(self, name: object) -> bool:
        return name in self.data

    def __getitem__(self, name: str) -> Any:
        return self.data[name]

    @property
    def batch_size(self) -> int:
        return self.present.shape[0]

    def mask(self, name: str) -> Tensor:
        """``[B]`` bool: which examples have ``name`` (all false when it is not observed at all)."""
        if name not in self.data:
            return torch.zeros(self.batch_size, dtype=torch.bool, device=self.present.device)
        return self.present[:, self.names.index(name)]

    def without(self, names: Iterable[str]) -> Observed:
        """The same observation with ``names`` removed (marked absent)."""
        names = set(names)
        keep = torch.tensor([m not in names for m in self.names], device=self.present.device)
        return Observed({m: v for m, v in self.data.items() if m not in names}, self.present & keep, self.names)


def skipped(kind: str, skip: Iterable[str]) -> bool:
    """Whether a term of ``kind`` is left out: ``skip`` holds kinds or kind families (``diffusion`` covers
    ``diffusion_recon`` and ``diffusion_prior`` too)."""
    return any(kind == s or kind.startswith(s + "_") for s in skip)


class Decoder(nn.Module):
    """Base class of every decoder. ``modalities`` are its targets; left empty, the model binds the decoder to the
    modality it is keyed by (:meth:`bind`). ``reads`` names the other modalities it conditions on (the model checks
    they exist). Subclasses implement :meth:`loss` and :meth:`generate`."""

    #: Whether the targets are token sequences (a text modality's batch: ``input_ids`` and ``attention_mask``).
    is_text: bool = False
    #: The shape of one sample of a target, for decoders that compose (:attr:`can_compose`); ``None`` otherwise.
    shape: tuple[int, ...] | None = None

    def __init__(self, modalities: Sequence[str] = (), latent_dim: int = 0) -> None:
        super().__init__()
        self.modalities: tuple[str, ...] = tuple(modalities)
        self.reads: tuple[str, ...] = ()
        #: The size of the latent ``z`` the decoder reads; 0 for one that reads none (MT-Diffusion's joint model).
        self.latent_dim: int = latent_dim

    def bind(self, key: str) -> Decoder:
        """Called once by the model with the decoder's key: a decoder without explicit ``modalities`` serves the
        modality named ``key``."""
        if not self.modalities:
            self.modalities = (key,)
        return self

    def check_specs(self, specs: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` (one line) when the data's modality specs (``diffmvae.data.ModalitySpec``: ``kind``,
        ``shape``, ``num_classes``) do not fit this decoder; called before training. The default accepts anything."""

    def term_weights(self) -> dict[str, float]:
        """Default weights of this decoder's terms by term name (part of its objective, like eq. 6's ``lambda``);
        the trainer's ``term_weights`` override them."""
        return {}

    def bound_terms(self) -> frozenset[str]:
        """The term kinds whose sum is an upper bound on ``-log p(x_m | z)`` for each target (empty when the loss is
        a surrogate, as DDPM's simple loss is); evaluation reports an ELBO only when every modality has one."""
        return frozenset()

    def loss(self, z: Tensor, example: Observed, *, generator: torch.Generator | None = None,
             skip: frozenset[str] = frozenset()) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """Named per-example terms ``{"<target>/<kind>": [B]}`` (summed over the data dimensions) for the targets in
        ``example``; kinds in ``skip`` (see :func:`skipped`) are left out and not computed."""
        raise NotImplementedError

    def generate(self, z: Tensor, given: Observed, *, targets: Sequence[str], sampling: SamplingSettings = SamplingSettings(),
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """Samples of ``targets`` (a subset of :attr:`modalities`) given ``z [B, d]`` and the observed ``given``."""
        raise NotImplementedError

    def check_sampling(self, sampling: SamplingSettings) -> None:
        """Raise ``ValueError`` (one line) when this decoder cannot sample with ``sampling``; called before any
        sampling starts. Decoders without sampling settings accept anything."""

    def describe_sampling(self, sampling: SamplingSettings) -> dict[str, Any] | None:
        """What this decoder does with ``sampling`` (its resolved sampler and settings), for the records; ``None``
        for decoders that have no sampling settings."""
        return None

    def nll(self, z: Tensor, x: Any) -> Tensor:
        """``-log p(x | z)`` per example ``[B]`` of one target's batch ``x``, for decoders with an exact likelihood;
        the default raises (a diffusion decoder's loss is a bound or a surrogate, see :meth:`bound_terms`)."""
        raise NotImplementedError(f"{type(self).__name__} has no exact likelihood")

    def portable_args(self) -> dict[str, Any]:
        """``init_args`` that rebuild this decoder from its config alone, with nothing read from the author's disk
        (a pretrained network's sizes instead of its folder; the weights travel in the model's state): ``{}`` for
        decoders that read no files."""
        return {}

    # ------------------------------------------------------------------ capabilities: composition and guidance
    @property
    def can_compose(self) -> bool:
        """Whether this decoder's predictions compose (Unite-and-Conquer): :meth:`expert` and
        :meth:`generate_composed` work. The default: no."""
        return False

    @property
    def can_drop_condition(self) -> bool:
        """Whether the decoder was trained with condition dropout, so it has an unconditional (null) prediction for
        guidance and for compositions whose weights do not sum to 1. The default: no."""
        return False

    def expert(self, targets: Sequence[str], zs: Sequence[Tensor], weights: Sequence[float], reliability: float = 1.0,
               name: str = "model") -> Any:
        """This decoder as one :class:`~decoders.composition.Expert` of a composition (only when :attr:`can_compose`)."""
        raise NotImplementedError(f"{type(self).__name__} does not compose predictions")

    def generate_composed(self, zs: Sequence[Tensor], weights: Sequence[float], *, targets: Sequence[str],
                          sampling: SamplingSettings = SamplingSettings(), generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Samples of ``targets`` composed from one source per latent in ``zs`` (only when :attr:`can_compose`)."""
        raise NotImplementedError(f"{type(self).__name__} does not compose predictions")

    def bits_per_dim(self, z: Tensor, example: Observed, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{target: [B]}`` bits per dimension of a bound on the discrete (8-bit) likelihood, for decoders that give
        one (VDM); empty otherwise."""
        return {}


def example_targets(decoder: Decoder, example: Mapping[str, Any] | Observed) -> list[str]:
    """The decoder's targets present in ``example``."""
    return [m for m in decoder.modalities if m in example]
