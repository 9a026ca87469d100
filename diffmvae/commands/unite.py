"""The command line of Unite-and-Conquer: ``--compose`` on ``diffmvae sample`` / ``evaluate`` (composition within one
model) and ``diffmvae unite`` (across models). Split from :mod:`diffmvae.cli`, which registers them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from tqdm.auto import tqdm

from diffmvae.commands.common import CommandParser, add_sampling_arguments, sampling_overrides
from diffmvae.data.batches import collate_split
from diffmvae.devices import add_device_arguments, pick_device
from diffmvae.evaluation.classifier import predict
from diffmvae.evaluation.frechet import FeatureExtractor, PixelPCA, frechet_distance
from diffmvae.evaluation.runs import classifiers_for_run, label_free_features
from diffmvae.generation.sampling import write_samples
from diffmvae.generation.unite import UniteSpec, check_member, null_needed, unite_batch
from diffmvae.io import DiffMVAEError, atomic_write, check_out_dir, markdown_table
from diffmvae.model.composition import Composition, parse_floats
from diffmvae.store.load import load_run

log = logging.getLogger("diffmvae")


def add_composition_arguments(p: argparse.ArgumentParser) -> None:
    """``--compose/--weights/--poe_weight``: Unite-and-Conquer within one model (:class:`diffmvae.unite.Composition`)."""
    p.add_argument("--compose", default=None,
                   help="compose the diffusion decoders' predictions from several sources of the observed modalities: 'each' (one "
                        "per modality, its own z ~ q(z|x_m)), 'each+poe' (and the PoE latent), 'poe', subsets like 'm0;m2;m0+m2', "
                        "or a YAML file with sources / weights / poe_weight (needs decoders trained with cond_dropout)")
    p.add_argument("--weights", default=None, help="composition weights: one for every source, or one per listed subset (default 1)")
    p.add_argument("--poe_weight", type=float, default=None, help="weight of the PoE source of 'each+poe' (default: --weights)")
    p.add_argument("--draws", type=int, default=1, help="latents drawn per source, each a source with the source's weight (default 1)")


def composition_from(args: argparse.Namespace) -> Any:
    """The :class:`~diffmvae.unite.Composition` the command line asks for, or ``None``."""

    if args.compose is None:
        if args.weights is not None or args.poe_weight is not None or args.draws != 1:
            raise DiffMVAEError("--weights, --poe_weight and --draws need --compose")
        return None
    if args.compose.endswith((".yaml", ".yml")):

        path = Path(args.compose)
        if not path.is_file():
            raise DiffMVAEError(f"composition file {path} does not exist")
        spec = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(spec) - {"sources", "weights", "poe_weight", "draws"}) if isinstance(spec, dict) else ["(not a mapping)"]
        if unknown:
            raise DiffMVAEError(f"composition file {path}: unknown key {unknown[0]!r} (expected sources, weights, poe_weight, draws)")
        sources = spec.get("sources", "each")
        if not isinstance(sources, str):  # a list of subsets, as on the command line m0;m2+m3
            sources = ";".join("+".join(map(str, s)) for s in sources)
        return Composition.parse(sources, spec.get("weights", 1.0), spec.get("poe_weight"), spec.get("draws", 1))
    return Composition.parse(args.compose, args.weights if args.weights is not None else 1.0, args.poe_weight, args.draws)


def unite_command(argv: list[str]) -> int:
    p = CommandParser(prog="diffmvae unite", description="Unite-and-Conquer across models: generate one target modality "
                                "from separately trained checkpoints, each conditioned on what it was trained on, composed at sampling time.")
    p.add_argument("--config", default=None, help="YAML with target and models (ckpt, given, weight, reliability); see diffmvae.unite")
    p.add_argument("--ckpt", action="append", default=None, help="a checkpoint (repeat; instead of --config, with --target and --given)")
    p.add_argument("--target", default=None, help="the modality to generate (with --ckpt)")
    p.add_argument("--given", action="append", default=None, help="per --ckpt, its observed modalities, comma separated")
    p.add_argument("--weights", default=None, help="per --ckpt, its source's weight (default 1 each)")
    p.add_argument("--reliabilities", default=None, help="per --ckpt, its reliability; they sum to 1 (default: equal shares)")
    p.add_argument("--out", required=True, help="output directory (grid.png, samples.npz; metrics.json/.md with --evaluate)")
    p.add_argument("--n", type=int, default=None, help="examples of --split to condition on (default: all)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--evaluate", action="store_true", help="judge the target's coherence and FD, composed and each model alone")
    p.add_argument("--classifiers", default=None, help="classifier file (default: the one for the first model's data, trained if missing)")
    add_sampling_arguments(p)
    add_device_arguments(p)
    args = p.parse_args(argv)
    device = pick_device(args.accelerator, args.devices)
    if args.config and (args.ckpt or args.target or args.given):
        raise DiffMVAEError("give either --config or --ckpt/--target/--given, not both")
    spec = UniteSpec.from_file(args.config) if args.config else UniteSpec.from_mapping(unite_mapping(args), "the command line")
    if args.n is not None and args.n < 1:
        raise DiffMVAEError(f"--n must be >= 1, got {args.n}")
    start = time.perf_counter()
    metrics = run_unite(spec, args.out, n=args.n, seed=args.seed, split=args.split, sampling=sampling_overrides(args),
                        evaluate=args.evaluate, classifiers=args.classifiers, device=device,
                        overwrite=args.overwrite)
    for name, m in metrics.items():
        log.info("%-28s coherence %.3f  FD %.1f", name, m.get("coherence", float("nan")), m["fd"])
    log.info("wrote %s in %.0fs", args.out, time.perf_counter() - start)
    return 0


def unite_mapping(args: argparse.Namespace) -> dict[str, Any]:
    """``--ckpt/--target/--given/--weights/--reliabilities`` as the mapping of a unite config."""

    if not args.ckpt or not args.target or not args.given:
        raise DiffMVAEError("diffmvae unite needs --config, or --ckpt (repeated), --target and one --given per --ckpt")
    n = len(args.ckpt)
    if len(args.given) != n:
        raise DiffMVAEError(f"{n} --ckpt need {n} --given, got {len(args.given)}")
    weights = parse_floats(args.weights, "--weights") if args.weights else (1.0,) * n
    reliabilities = parse_floats(args.reliabilities, "--reliabilities") if args.reliabilities else (1.0 / n,) * n
    if len(weights) != n or len(reliabilities) != n:
        raise DiffMVAEError(f"{n} --ckpt need {n} --weights and --reliabilities, got {len(weights)} and {len(reliabilities)}")
    return {"target": args.target, "models": [{"ckpt": c, "given": g, "weight": w, "reliability": a}
                                              for c, g, w, a in zip(args.ckpt, args.given, weights, reliabilities)]}


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
    overwrite: bool = True,
) -> dict[str, Any]:
    """Load the checkpoints, check everything, then sample ``target`` for ``n`` examples of ``split`` (all by default)
    from the composition and write ``samples.npz`` / ``grid.png`` into ``out``; with ``evaluate``, also the target's
    coherence and Fréchet distance, for the composition and (``alone``) for each model by itself, into
    ``metrics.json`` / ``metrics.md``. Returns the metrics (empty without ``evaluate``). An ``out`` that holds files is
    refused unless ``overwrite``."""

    out = check_out_dir(out, overwrite=overwrite)
    runs = [load_run(m.ckpt, device=device) for m in spec.members]
    models = [r.module.model for r in runs]
    settings = [r.module.sampling.replace(**(sampling or {})) for r in runs]
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
    # the label-free feature space, as diffmvae evaluate fits it: the pixel PCA of the first model's real training images
    pca = label_free_features(runs[0], [spec.target])[spec.target] if evaluate else None
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
            metrics[name] = judge(samples[name], data[0][spec.target], labels, clfs, pca)
            log.info("%s: coherence %.3f, FD %.1f (classifier) / %.2f (pixel PCA)", name, metrics[name]["coherence"], metrics[name]["fd"],
                     metrics[name]["fd_pca"])
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

    clfs, _, clf_path = classifiers_for_run(run, path, progress)
    if target not in clfs or not clfs[target].has_features:
        raise DiffMVAEError(f"classifier file {clf_path} has no image classifier for {target!r}")
    return clfs[target]


def judge(fake: Tensor, real: Tensor, labels: Tensor | None, classifier: Any, pca: PixelPCA) -> dict[str, float]:
    """Coherence (the judge reads the example's label) and Fréchet distance of images, in the judge's features and
    in the label-free pixel PCA."""
    out = {"fd": frechet_distance(real, fake, FeatureExtractor(classifier)), "fd_pca": frechet_distance(real, fake, pca),
           "n": int(fake.shape[0])}
    if labels is not None:
        out["coherence"] = (predict(classifier, fake) == labels).float().mean().item()
    return out


def write_unite_metrics(out: Path, metrics: Mapping[str, Mapping[str, float]], record: Mapping[str, Any]) -> None:
    """``metrics.json`` and ``metrics.md`` (one row per sampler of the target), written whole or not at all."""

    table = markdown_table(["source", "coherence", "FD (classifier features)", "FD (pixel PCA)"],
                           [(name, f"{m.get('coherence', float('nan')):.3f}", f"{m['fd']:.1f}", f"{m['fd_pca']:.2f}") for name, m in metrics.items()])
    atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps({"metrics": metrics, **record}, indent=2)))
    atomic_write(out / "metrics.md", lambda p: p.write_text(f"# Unite-and-Conquer: {record['unite']['target']}\n\n{table}"))
