"""``diffmvae pipeline``: a data set's experiment pipeline."""

from __future__ import annotations

import logging
import time

import yaml

from diffmvae.commands.checks import check_data_root
from diffmvae.commands.common import CommandParser
from diffmvae.io import DiffMVAEError
from diffmvae.pipeline.run import run_pipeline
from diffmvae.pipeline.spec import load_pipeline

log = logging.getLogger("diffmvae")


def _pipeline(argv: list[str]) -> int:
    p = CommandParser(prog="diffmvae pipeline", description="A data set's experiment pipeline: fit, prior fit, evaluate, "
                                "table and plots; finished stages are skipped, so running it again resumes.")
    p.add_argument("--config", required=True, help="pipeline YAML, e.g. experiments/polydigits/pipeline.yaml")
    p.add_argument("--out", default=None, help="output folder (default: the YAML's 'out')")
    p.add_argument("--only", action="append", default=[], help="run only this run's stages (repeatable); the report covers all")
    p.add_argument("--dry_run", action="store_true", help="list the stages still to run and their commands, run nothing")
    p.add_argument("--data_root", default=None, metavar="DIR",
                   help="the data set's folder (its data.init_args.root) in every derived fit config: the one way to point a pipeline at its data")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set KEY (a.b.c, or **.name at any depth) in every derived fit config; VALUE is YAML (repeatable)")
    p.add_argument("--fit_arg", action="append", default=[], help="an argument appended to every fit, e.g. --fit_arg=--data.init_args.root=DIR")
    p.add_argument("--prior_arg", action="append", default=[], help="an argument appended to every prior fit, e.g. --prior_arg=--fit.steps=10")
    args = p.parse_args(argv)
    start = time.perf_counter()
    spec = load_pipeline(args.config, args.out)
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise DiffMVAEError(f"--set takes KEY=VALUE, got {item!r}")
        spec.overrides[key] = yaml.safe_load(value)
    if args.data_root is not None:
        check_data_root(args.data_root, "--data_root")
        spec.overrides["data.init_args.root"] = args.data_root
    spec.fit_args += tuple(args.fit_arg)
    spec.prior_args = tuple(args.prior_arg)
    files = run_pipeline(spec, only=args.only, dry_run=args.dry_run)
    if files:
        log.info("pipeline done in %.0fs: %s", time.perf_counter() - start, ", ".join(map(str, files)))
    return 0
