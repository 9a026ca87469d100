"""Unite-and-Conquer across separately trained models."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from decoders import SamplingSettings
from decoders.composition import RELIABILITY_TOLERANCE, Expert, null_weights, sample_composed
from diffmvae.io import DiffMVAEError, read_yaml
from diffmvae.model.composition import parse_floats
from diffmvae.model.posterior import reparameterize


@dataclass(frozen=True)
class Member:
    """One model of a cross-model composition: a checkpoint, its reliability, and its sources ``[(given, beta)]``."""

    ckpt: str
    sources: tuple[tuple[tuple[str, ...], float], ...]
    reliability: float
    name: str


@dataclass(frozen=True)
class UniteSpec:
    """``diffmvae unite``'s YAML::

        target: m1
        models:
          - {ckpt: runs/unite/pair_m0_m1/checkpoints/last.ckpt, given: [m0], weight: 1.0, reliability: 0.5}
          - {ckpt: runs/unite/pair_m2_m1/checkpoints/last.ckpt, given: [m2], weight: 1.0, reliability: 0.5}

    A model may list several ``sources: [{given: [...], weight: w}, ...]`` instead of ``given`` / ``weight``.
    Reliabilities default to equal shares."""

    target: str
    members: tuple[Member, ...] = field(default=())

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any], where: str = "the unite config") -> UniteSpec:
        if not isinstance(spec, Mapping) or "target" not in spec or "models" not in spec:
            raise DiffMVAEError(f"{where} needs 'target' and 'models' keys")
        unknown = sorted(set(spec) - {"target", "models"})
        if unknown:
            raise DiffMVAEError(f"{where}: unknown key {unknown[0]!r} (expected target, models)")
        models = spec["models"]
        if not isinstance(models, Sequence) or isinstance(models, str) or not models:
            raise DiffMVAEError(f"{where}: 'models' must be a non-empty list")
        members = []
        for i, entry in enumerate(models):
            at = f"{where}: models[{i}]"
            if not isinstance(entry, Mapping) or "ckpt" not in entry:
                raise DiffMVAEError(f"{at} needs a 'ckpt'")
            bad = sorted(set(entry) - {"ckpt", "given", "weight", "sources", "reliability", "name"})
            if bad:
                raise DiffMVAEError(f"{at}: unknown key {bad[0]!r}")
            raw = entry.get("sources") or [{"given": entry.get("given"), "weight": entry.get("weight", 1.0)}]
            sources = []
            for source in raw:
                given = source.get("given") if isinstance(source, Mapping) else None
                if not given or isinstance(given, str) and not given.strip():
                    raise DiffMVAEError(f"{at}: every source needs 'given' (the modalities it conditions on)")
                given = [g.strip() for g in given.split(",")] if isinstance(given, str) else [str(g) for g in given]
                (weight,) = parse_floats(source.get("weight", 1.0), f"{at} weight")
                sources.append((tuple(given), weight))
            reliability = entry.get("reliability", 1.0 / len(models))
            if not isinstance(reliability, (int, float)) or not 0.0 <= reliability <= 1.0:
                raise DiffMVAEError(f"{at}: reliability must be a number in [0, 1], got {reliability!r}")
            name = str(entry.get("name") or Path(entry["ckpt"]).parent.parent.name or f"model{i}")
            members.append(Member(str(entry["ckpt"]), tuple(sources), float(reliability), name))
        total = sum(m.reliability for m in members)
        if abs(total - 1.0) > RELIABILITY_TOLERANCE:
            raise DiffMVAEError(f"{where}: reliabilities must sum to 1, got {[m.reliability for m in members]} (sum {total:g})")
        if len({m.name for m in members}) < len(members):  # e.g. several .../run/checkpoints/last.ckpt: name by two folders
            members = [Member(m.ckpt, m.sources, m.reliability, "/".join(Path(m.ckpt).parts[-4:-2]) or m.name) for m in members]
        if len({m.name for m in members}) < len(members):
            members = [Member(m.ckpt, m.sources, m.reliability, f"{m.name}-{i + 1}") for i, m in enumerate(members)]
        return cls(str(spec["target"]), tuple(members))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> UniteSpec:
        return cls.from_mapping(read_yaml(path, "unite config"), str(path))

    def alone(self, member: Member) -> UniteSpec:
        """The same target from ``member`` alone (reliability 1): the baseline a composition is compared with."""
        return UniteSpec(self.target, (Member(member.ckpt, member.sources, 1.0, member.name),))

    def record(self) -> dict[str, Any]:
        return {"target": self.target, "models": [{"name": m.name, "ckpt": m.ckpt, "reliability": m.reliability,
                                                   "sources": [{"given": list(g), "weight": w} for g, w in m.sources]} for m in self.members]}


def check_member(member: Member, model: Any, target: str, sampling: SamplingSettings, null_needed: bool) -> Any:
    """The member's decoder of ``target``, or one line saying why this model cannot take part."""
    names = model.modalities
    if target not in names:
        raise DiffMVAEError(f"{member.ckpt} cannot generate {target!r}: its modalities are {', '.join(names)}")
    decoder = model.decoder_for(target)
    if not decoder.can_compose:
        raise DiffMVAEError(f"{member.ckpt} generates {target!r} with a {type(decoder).__name__}, not a diffusion decoder; only "
                            "diffusion predictions compose")
    for given, _ in member.sources:
        unknown = [m for m in given if m not in names]
        if unknown:
            raise DiffMVAEError(f"{member.ckpt}: unknown modality {unknown[0]!r} in 'given'; this model has {', '.join(names)}")
        if target in given:
            raise DiffMVAEError(f"{member.ckpt}: the target {target!r} cannot also be given")
    if null_needed and not decoder.can_drop_condition:
        raise DiffMVAEError(f"{member.ckpt}: its {target!r} decoder was trained without condition dropout, so it has no "
                            "unconditional prediction; composing needs one unless the weights sum to 1")
    try:
        decoder.check_sampling(sampling)
    except ValueError as err:
        raise DiffMVAEError(f"{member.ckpt}: {err}") from None
    return decoder


def unite_batch(spec: UniteSpec, models: Sequence[Any], inputs: Sequence[Mapping[str, Tensor]], *, sampling: SamplingSettings,
                generator: torch.Generator) -> Tensor:
    """``target`` samples ``[B, ...]`` in ``[0, 1]`` for one batch: each model's sources encoded by that model (``z_s ~
    q(z | x_s)``), every model's decoder one expert, composed (:func:`~decoders.composition.sample_composed`)."""
    experts: list[Expert] = []
    for member, model, x in zip(spec.members, models, inputs):
        decoder = model.decoder_for(spec.target)
        device = model.device_of()
        zs = [reparameterize(*model.posterior({m: x[m].to(device) for m in given}), generator) for given, _ in member.sources]
        experts.append(decoder.expert([spec.target], zs, [w for _, w in member.sources], member.reliability, member.name))
    shape = models[0].decoder_for(spec.target).shape
    batch = next(iter(inputs[0].values())).shape[0]
    x = sample_composed(experts, (batch, *shape), sampling=sampling, generator=generator, device=models[0].device_of(),
                        dtype=zs[0].dtype)
    return x.add(1).div(2).clamp(0, 1)


def null_needed(spec: UniteSpec) -> list[bool]:
    """Per member, whether the rule uses its null prediction (its coefficient ``a_j (1 - sum beta)`` is not 0)."""
    weights = null_weights([m.reliability for m in spec.members], [w for m in spec.members for _, w in m.sources])
    return [c != 0.0 for c in weights]


