"""Unite-and-Conquer for multimodal VAEs (seed 001; DESIGN §2.6): compose conditional diffusion predictions from
several sources, within one model and across separately trained models.

* Within one model (:class:`Composition`, ``diffmvae sample/evaluate --compose``): a diffusion decoder trained with
  condition dropout generates a missing modality from one source per observed subset, each conditioning it on its
  own latent ``z_s ~ q(z | x_s)`` (``each``: every observed modality alone; ``each+poe``: also the PoE latent of all
  of them), composed with the decoder's null prediction, instead of decoding one PoE latent. Modalities whose
  decoders are feed-forward are decoded from the PoE latent as usual.
* Across models (:class:`UniteSpec`, ``diffmvae unite``): checkpoints whose diffusion decoders generate the same
  target modality, each conditioned on what it was trained on, composed at sampling time with each model's own null
  prediction weighed by its reliability. The models never saw their conditions together.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from decoders import SamplingSettings
from decoders.composition import RELIABILITY_TOLERANCE, Expert, null_weights, sample_composed
from diffmvae.io import DiffMVAEError
from diffmvae.posterior import reparameterize

log = logging.getLogger(__name__)

SOURCE_RULES = ("each", "each+poe", "poe")


def parse_floats(text: str | float | Sequence[float], what: str) -> tuple[float, ...]:
    """``"1,0.5"`` / ``1.5`` / ``[1, 0.5]`` -> floats; a bad entry gives one line naming ``what``."""
    if isinstance(text, (int, float)):
        return (float(text),)
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise DiffMVAEError(f"{what} must be numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise DiffMVAEError(f"{what} must be finite numbers, got {text!r}")
    return values


@dataclass(frozen=True)
class Composition:
    """Which sources compose a missing modality within one model, and their weights.

    Args:
        sources: ``each`` (one source per observed modality), ``each+poe`` (those and the PoE latent of all observed
            modalities), ``poe`` (the PoE latent alone: with ``weights`` ``w`` this is classifier-free guidance on it),
            or explicit subsets of the observed modalities (``[[m0], [m2], [m0, m2]]``, on the command line
            ``m0;m2;m0+m2``).
        weights: ``beta`` per source: one number for every source, or one per explicit source.
        poe_weight: ``beta`` of the PoE source of ``each+poe`` (default: the same as the others).
        draws: latents drawn per source (``z_s^1..z_s^n ~ q(z | x_s)``), each its own source with the source's weight:
            ``n`` draws of weight ``1 / n`` average the predictions over the posterior; weight 1 each multiplies them
            (what the draws share, the digit, is kept; what they disagree on is not).
    """

    sources: str | tuple[tuple[str, ...], ...] = "each"
    weights: tuple[float, ...] = (1.0,)
    poe_weight: float | None = None
    draws: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.draws, int) or self.draws < 1:
            raise DiffMVAEError(f"composition draws must be an integer >= 1, got {self.draws!r}")
        if isinstance(self.sources, str):
            if self.sources not in SOURCE_RULES:
                raise DiffMVAEError(f"unknown composition sources {self.sources!r}; use {', '.join(SOURCE_RULES)} or subsets like m0;m2;m0+m2")
            if len(self.weights) != 1:
                raise DiffMVAEError(f"composition {self.sources!r} takes one weight for every source, got {list(self.weights)}")
        else:
            if not self.sources or any(not s for s in self.sources):
                raise DiffMVAEError(f"composition sources must be non-empty subsets, got {self.sources!r}")
            if len(self.weights) not in (1, len(self.sources)):
                raise DiffMVAEError(f"{len(self.sources)} composition sources need 1 or {len(self.sources)} weights, got {list(self.weights)}")

    @classmethod
    def parse(cls, sources: str, weights: str | float | Sequence[float] = 1.0, poe_weight: float | None = None, draws: int = 1) -> Composition:
        """From the command line: ``sources`` a rule or ``m0;m2;m0+m2``, ``weights`` ``"1.5"`` or ``"1,1,0.5"``."""
        text = sources.strip()
        rule: str | tuple[tuple[str, ...], ...] = text if text in SOURCE_RULES else tuple(
            tuple(m.strip() for m in part.split("+")) for part in text.split(";"))
        return cls(rule, parse_floats(weights, "--weights"), poe_weight, draws)

    @classmethod
    def coerce(cls, value: Composition | Mapping[str, Any] | None) -> Composition | None:
        if value is None or isinstance(value, Composition):
            return value
        sources = value.get("sources", "each")
        sources = sources if isinstance(sources, str) else tuple(tuple(s) for s in sources)
        return cls(sources, parse_floats(value.get("weights", 1.0), "weights"), value.get("poe_weight"), value.get("draws", 1))

    def resolve(self, given: Sequence[str]) -> list[tuple[tuple[str, ...], float]]:
        """``[(subset, beta), ...]`` for the observed modalities ``given`` (duplicates of one subset kept once; each
        source ``draws`` times)."""
        given = tuple(given)
        if not given:
            raise DiffMVAEError("a composition needs observed modalities (--given)")
        w = self.weights[0]
        if self.sources == "each":
            out = [((m,), w) for m in given]
        elif self.sources == "poe":
            out = [(given, w)]
        elif self.sources == "each+poe":
            out = [((m,), w) for m in given]
            if len(given) > 1:
                out.append((given, self.poe_weight if self.poe_weight is not None else w))
        else:
            weights = self.weights if len(self.weights) > 1 else self.weights * len(self.sources)
            out = []
            for subset, beta in zip(self.sources, weights):
                outside = [m for m in subset if m not in given]
                if outside:
                    raise DiffMVAEError(f"composition source {'+'.join(subset)} names {outside[0]!r}, which is not observed "
                                        f"(--given {','.join(given)})")
                out.append((tuple(m for m in given if m in subset), beta))
        seen: dict[tuple[str, ...], float] = {}
        for subset, beta in out:
            seen.setdefault(subset, beta)
        return [item for item in seen.items() for _ in range(self.draws)]

    def record(self) -> dict[str, Any]:
        sources = self.sources if isinstance(self.sources, str) else ["+".join(s) for s in self.sources]
        return {"sources": sources, "weights": list(self.weights), "poe_weight": self.poe_weight, "draws": self.draws}


def composable(decoder: Any) -> bool:
    """Whether a decoder can be an expert of a composition (a diffusion decoder with :meth:`expert`)."""
    return hasattr(decoder, "expert") and hasattr(decoder, "generate_composed")


# ---------------------------------------------------------------------------------------------------- across models
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
        from diffmvae.io import read_yaml

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
    decoder = model.decoders[model.decoder_of[target]] if hasattr(model, "decoder_of") else None
    if decoder is None or not composable(decoder):
        raise DiffMVAEError(f"{member.ckpt} generates {target!r} with a {type(decoder).__name__}, not a diffusion decoder; only "
                            "diffusion predictions compose")
    for given, _ in member.sources:
        unknown = [m for m in given if m not in names]
        if unknown:
            raise DiffMVAEError(f"{member.ckpt}: unknown modality {unknown[0]!r} in 'given'; this model has {', '.join(names)}")
        if target in given:
            raise DiffMVAEError(f"{member.ckpt}: the target {target!r} cannot also be given")
    if null_needed and decoder.cond_dropout <= 0:
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
        decoder = model.decoders[model.decoder_of[spec.target]]
        device = model.device_of()
        zs = [reparameterize(*model.posterior({m: x[m].to(device) for m in given}), generator) for given, _ in member.sources]
        experts.append(decoder.expert([spec.target], zs, [w for _, w in member.sources], member.reliability, member.name))
    shape = models[0].decoders[models[0].decoder_of[spec.target]].shape
    batch = next(iter(inputs[0].values())).shape[0]
    x = sample_composed(experts, (batch, *shape), sampling=sampling, generator=generator, device=models[0].device_of(),
                        dtype=zs[0].dtype)
    return x.add(1).div(2).clamp(0, 1)


def null_needed(spec: UniteSpec) -> list[bool]:
    """Per member, whether the rule uses its null prediction (its coefficient ``a_j (1 - sum beta)`` is not 0)."""
    weights = null_weights([m.reliability for m in spec.members], [w for m in spec.members for _, w in m.sources])
    return [c != 0.0 for c in weights]


def run_unite(
    spec: UniteSpec,
    out: str | os.PathLike,
    *,
    n: int | None = None,
    seed: int = 0,
    split: str = "test",
    sampling: Mapping[str, Any] | None = None,
    evaluate: bool = False,
    alone: bool = True,
    classifiers: str | None = None,
    chunk_size: int = 256,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Load the checkpoints, check everything, then sample ``target`` for ``n`` examples of ``split`` (all by default)
    from the composition and write ``samples.npz`` / ``grid.png`` into ``out``; with ``evaluate``, also the target's
    coherence and Fréchet distance, for the composition and (``alone``) for each model by itself, into
    ``metrics.json`` / ``metrics.md``. Returns the metrics (empty without ``evaluate``)."""
    from diffmvae.checkpoint import load_run
    from diffmvae.evaluation.classifier import collate_split
    from diffmvae.io import check_out_dir
    from diffmvae.sampling import write_samples

    out = check_out_dir(out)
    runs = [load_run(m.ckpt, device=device) for m in spec.members]
    models = [r.module.model for r in runs]
    settings = [SamplingSettings.coerce(r.module.sampling).replace(**(sampling or {})) for r in runs]
    for member, model, needed, s in zip(spec.members, models, null_needed(spec), settings):
        check_member(member, model, spec.target, s, needed)
    settings_used = settings[0]
    data = [collate_split(r.datamodule.dataset(split), n) for r in runs]
    labels = data[0].get("label")
    for member, d in zip(spec.members[1:], data[1:]):
        if labels is not None and ("label" not in d or not torch.equal(d["label"], labels)):
            raise DiffMVAEError(f"{member.ckpt}: its {split} examples are not the same as {spec.members[0].ckpt}'s (labels differ); "
                                "composed models must read the same examples")
    clfs = judge_for(runs[0], spec.target, classifiers, progress) if evaluate else None
    count = next(iter(data[0].values())).shape[0]
    jobs = [("composed", spec, models, data)]
    if alone and len(spec.members) > 1:
        jobs += [(f"{m.name} alone", spec.alone(m), [mod], [d]) for m, mod, d in zip(spec.members, models, data)]
    metrics: dict[str, Any] = {}
    samples: dict[str, Tensor] = {}
    for name, job, job_models, job_data in jobs:
        generator = torch.Generator(device=job_models[0].device_of()).manual_seed(seed)
        parts = []
        for start in tqdm(range(0, count, chunk_size), desc=f"unite: {name}", disable=not progress, leave=False):
            inputs = [{m: d[m][start:start + chunk_size] for g, _ in member.sources for m in g}
                      for member, d in zip(job.members, job_data)]
            with torch.no_grad():
                parts.append(unite_batch(job, job_models, inputs, sampling=settings_used, generator=generator).float().cpu())
        samples[name] = torch.cat(parts)
        if evaluate:
            metrics[name] = judge(samples[name], data[0][spec.target], labels, clfs)
            log.info("%s: coherence %.3f, FD %.1f", name, metrics[name]["coherence"], metrics[name]["fd"])
    given = sorted({m for member in spec.members for g, _ in member.sources for m in g})
    shown = {m: next(d[m] for d in data if m in d) for m in given}
    shown.update({spec.target if name == "composed" else f"{spec.target}_{re.sub(r'[^A-Za-z0-9_]+', '_', name)}": s
                  for name, s in samples.items()})
    specs = {**runs[0].datamodule.specs, **{m: r.datamodule.specs[m] for r in runs for m in r.datamodule.specs}}
    specs.update({k: specs[spec.target] for k in shown if k not in specs})
    record = {"unite": spec.record(), "settings": settings_used.record(), "seed": seed, "split": split}
    write_samples(out, shown, specs, given, labels, sampling=record)
    if evaluate:
        write_unite_metrics(out, metrics, record)
    return metrics


def judge_for(run: Any, target: str, path: str | None, progress: bool) -> Any:
    """The ``diffmvae evaluate`` classifier of ``target`` (the file at ``path``, or the one cached for the first model's
    data, trained when missing)."""
    from diffmvae.evaluation.command import classifiers_for_run

    clfs, _, clf_path = classifiers_for_run(run, path, progress)
    if not hasattr(clfs.get(target), "features"):
        raise DiffMVAEError(f"classifier file {clf_path} has no image classifier for {target!r}")
    return clfs[target]


def judge(fake: Tensor, real: Tensor, labels: Tensor | None, classifier: Any) -> dict[str, float]:
    """Coherence (the judge reads the example's label) and Fréchet distance (in the judge's features) of images."""
    from diffmvae.evaluation.classifier import predict
    from diffmvae.evaluation.frechet import FeatureExtractor, frechet_distance

    out = {"fd": frechet_distance(real, fake, FeatureExtractor(classifier)), "n": int(fake.shape[0])}
    if labels is not None:
        out["coherence"] = (predict(classifier, fake) == labels).float().mean().item()
    return out


def write_unite_metrics(out: Path, metrics: Mapping[str, Mapping[str, float]], record: Mapping[str, Any]) -> None:
    """``metrics.json`` and ``metrics.md`` (one row per sampler of the target), written whole or not at all."""
    from diffmvae.io import atomic_write

    lines = [f"# Unite-and-Conquer: {record['unite']['target']}", "", "| source | coherence | FD |", "|---|---|---|"]
    lines += [f"| {name} | {m.get('coherence', float('nan')):.3f} | {m['fd']:.1f} |" for name, m in metrics.items()]
    atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps({"metrics": metrics, **record}, indent=2)))
    atomic_write(out / "metrics.md", lambda p: p.write_text("\n".join(lines) + "\n"))
