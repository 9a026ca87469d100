"""The command line of Unite-and-Conquer: ``--compose`` on ``diffmvae sample`` / ``evaluate`` (composition within one
model) and ``diffmvae unite`` (across models). Split from :mod:`diffmvae.cli`, which registers them."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("diffmvae")


def add_composition_arguments(p: argparse.ArgumentParser) -> None:
    """``--compose/--weights/--poe-weight``: Unite-and-Conquer within one model (:class:`diffmvae.unite.Composition`)."""
    p.add_argument("--compose", default=None,
                   help="compose the diffusion decoders' predictions from several sources of the observed modalities: 'each' (one "
                        "per modality, its own z ~ q(z|x_m)), 'each+poe' (and the PoE latent), 'poe', subsets like 'm0;m2;m0+m2', "
                        "or a YAML file with sources / weights / poe_weight (needs decoders trained with cond_dropout)")
    p.add_argument("--weights", default=None, help="composition weights: one for every source, or one per listed subset (default 1)")
    p.add_argument("--poe-weight", type=float, default=None, help="weight of the PoE source of 'each+poe' (default: --weights)")
    p.add_argument("--draws", type=int, default=1, help="latents drawn per source, each a source with the source's weight (default 1)")


def composition_from(args: argparse.Namespace) -> Any:
    """The :class:`~diffmvae.unite.Composition` the command line asks for, or ``None``."""
    from diffmvae.io import DiffMVAEError
    from diffmvae.unite import Composition

    if args.compose is None:
        if args.weights is not None or args.poe_weight is not None or args.draws != 1:
            raise DiffMVAEError("--weights, --poe-weight and --draws need --compose")
        return None
    if args.compose.endswith((".yaml", ".yml")):
        import yaml

        path = Path(args.compose)
        if not path.is_file():
            raise DiffMVAEError(f"composition file {path} does not exist")
        spec = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(spec) - {"sources", "weights", "poe_weight", "draws"}) if isinstance(spec, dict) else ["(not a mapping)"]
        if unknown:
            raise DiffMVAEError(f"composition file {path}: unknown key {unknown[0]!r} (expected sources, weights, poe_weight, draws)")
        return Composition.coerce(spec)
    return Composition.parse(args.compose, args.weights if args.weights is not None else 1.0, args.poe_weight, args.draws)


def unite_command(argv: list[str]) -> int:
    from diffmvae.cli import add_device_arguments, add_sampling_arguments, pick_device, sampling_overrides
    from diffmvae.io import DiffMVAEError
    from diffmvae.unite import UniteSpec, run_unite

    p = argparse.ArgumentParser(prog="diffmvae unite", description="Unite-and-Conquer across models: generate one target modality "
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
                        evaluate=args.evaluate, classifiers=args.classifiers, device=device)
    for name, m in metrics.items():
        log.info("%-28s coherence %.3f  FD %.1f", name, m.get("coherence", float("nan")), m["fd"])
    log.info("wrote %s in %.0fs", args.out, time.perf_counter() - start)
    return 0


def unite_mapping(args: argparse.Namespace) -> dict[str, Any]:
    """``--ckpt/--target/--given/--weights/--reliabilities`` as the mapping of a unite config."""
    from diffmvae.io import DiffMVAEError
    from diffmvae.unite import parse_floats

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
