"""``diffmvae evaluate``: coherence, Fréchet distances, latent probes and ELBO of trained runs."""

from __future__ import annotations

import logging
import time

from diffmvae.commands.common import CommandParser, add_sampling_arguments, sampling_overrides, seed_torch
from diffmvae.commands.unite import add_composition_arguments, composition_from
from diffmvae.devices import add_device_arguments, pick_device
from diffmvae.evaluation.runs import evaluate_checkpoints
from diffmvae.evaluation.suite import PARTS, EvalSettings

log = logging.getLogger("diffmvae")


def _evaluate(argv: list[str]) -> int:
    p = CommandParser(prog="diffmvae evaluate", description="Coherence, Fréchet distances, latent probes and ELBO of trained models.")
    p.add_argument("--ckpt", action="append", required=True, help="checkpoint to evaluate; repeat for several models")
    p.add_argument("--out", required=True, help="output directory (metrics.json, .csv, .md, .png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--names", default=None, help="model names, comma separated (default: run directory names)")
    p.add_argument("--n_samples", type=int, default=None, help="test examples to condition on (default: the whole test split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_subsets", type=int, default=10, help="subsets per size k, a seeded random sample when there are more")
    p.add_argument("--probe_train", type=int, default=2000, help="training examples of the latent linear probes")
    p.add_argument("--pca_components", type=int, default=64,
                   help="principal axes of real training pixels for the label-free Fréchet distance (fd_pca; 0: skip it)")
    p.add_argument("--pca_train", type=int, default=2000, help="real training images the pixel PCA is fitted on")
    p.add_argument("--classifiers", default=None, help="classifier file (default: runs/classifiers/<data key>.pt, trained if missing)")
    p.add_argument("--prior", default="auto", choices=("auto", "score", "gaussian"), help="prior of unconditional samples")
    p.add_argument("--thread_split", type=int, default=1,
                   help="on a CPU: each sampling batch cut into this many parts, each on its own thread (faster on few cores; other "
                        "draws of the same distribution; recorded)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"what to measure, comma separated: {', '.join(PARTS)} (default: all)")
    add_sampling_arguments(p)
    add_composition_arguments(p)
    p.add_argument("--inception_weights", default=None,
                   help="local Inception-v3 weights file: Fréchet distances in Inception space (needs the 'fid' extra)")
    add_device_arguments(p)
    args = p.parse_args(argv)
    device = pick_device(args.accelerator, args.devices)
    composition = composition_from(args)
    seed_torch(args.seed)
    start = time.perf_counter()
    settings = EvalSettings(n_samples=args.n_samples, seed=args.seed, max_subsets=args.max_subsets, probe_train=args.probe_train,
                            pca_components=args.pca_components, pca_train=args.pca_train,
                            inception_weights=args.inception_weights, parts=tuple(p for p in args.parts.split(",") if p),
                            thread_split=args.thread_split)
    names = args.names.split(",") if args.names else None
    paths = evaluate_checkpoints(args.ckpt, args.out, settings=settings, names=names, classifiers=args.classifiers, prior=args.prior,
                                 sampling=sampling_overrides(args), device=device, precision=args.precision, composition=composition,
                                 overwrite=args.overwrite)
    log.info("wrote %s in %.0fs", ", ".join(map(str, paths)), time.perf_counter() - start)
    return 0
