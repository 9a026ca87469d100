"""The ``diffmvae`` command: ``fit`` / ``validate`` / ``test`` through LightningCLI, ``sample`` for generation.

User errors (bad paths, config keys or values, modality names) end with one ``diffmvae: error: ...`` line and
exit status 2; set ``DIFFMVAE_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional

from diffmvae.devices import add_device_arguments, pick_device, precision
from diffmvae.io import one_line
from diffmvae.unite_cli import add_composition_arguments, composition_from, unite_command

log = logging.getLogger("diffmvae")

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")


SAMPLING_OPTIONS = ("sampler", "steps", "eta", "guidance", "start")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """``--sampler/--steps/--eta/--guidance/--start``: how every diffusion decoder samples (also used by the
    experiment scripts). Unset options keep the run's default (its config's ``sampling``, else exact sampling
    with each decoder's own sampler)."""
    p.add_argument("--sampler", default=None, help="sampler of every diffusion decoder: ddim, ancestral, euler_maruyama (as the process allows)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the sampler's own)")
    p.add_argument("--eta", type=float, default=None, help="DDIM's eta (0: deterministic, 1: ancestral)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale of every diffusion decoder (1: none; needs decoders trained with cond_dropout)")
    p.add_argument("--start", type=float, default=None,
                   help="time in (0, 1] where sampling begins: 1 (default) samples the model exactly; below 1 refines the "
                        "decoder's noised mean image (recorded in the outputs)")


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options given on the command line."""
    return {k: getattr(args, k) for k in SAMPLING_OPTIONS if getattr(args, k, None) is not None}


def sampling_settings(args: argparse.Namespace, module: Any) -> Any:
    """The run's default :class:`~decoders.SamplingSettings` with the command line's overrides, checked against the
    model (one-line errors before any sampling)."""
    from diffmvae.io import DiffMVAEError

    overrides = sampling_overrides(args)
    sampling = module.sampling.replace(**overrides)
    if not module.model.check_sampling(sampling) and overrides:
        raise DiffMVAEError(f"--{'/--'.join(overrides)} apply to diffusion decoders, and this model has none")
    return sampling


def configure_parsing() -> None:
    """jsonargparse settings the configs need: samplers are dataclasses, accepted by ``class_path`` as subclasses."""
    from jsonargparse import set_parsing_settings

    from decoders.diffusion import Sampler

    set_parsing_settings(subclasses_enabled=[Sampler])


def _parser_error(text: str) -> str:
    """Distil jsonargparse's nested Union report to the innermost class and its complaint."""
    where, what = None, text
    while (match := re.search(r"Problem with given class_path '([^']+)': (.*)", what)) is not None:
        where, what = match.group(1), match.group(2)
    if where is None:
        listed = re.search(r"Errors: - (.*?)(?: - Expected a <class 'NoneType'>| Given value|$)", text)
        return (listed.group(1).strip() if listed else text)[:400]
    what = re.split(r" - Expected a <class| Given value", what)[0].strip()
    outer = re.match(r'Parser key "([^"]+)"', text)
    prefix = f'config key "{outer.group(1)}" ' if outer else ""
    return f"{prefix}({where}): {what}"[:400]


def _config_error(e: BaseException) -> Exception:
    """A jsonargparse error as a one-line DiffMVAEError naming the innermost class and its complaint."""
    from diffmvae.io import DiffMVAEError

    return DiffMVAEError(_parser_error(one_line(e)))


def _parse_config(parser: Any, argv: list[str]) -> Any:
    """``parser.parse_args(argv)`` for a jsonargparse parser, its errors turned into one-line DiffMVAEErrors."""
    from jsonargparse import ArgumentError

    try:
        return parser.parse_args(argv)
    except ArgumentError as e:
        raise _config_error(e) from e


def _lightning(argv: list[str]) -> int:
    from jsonargparse import ArgumentError
    from lightning.pytorch.cli import LightningCLI

    from diffmvae.checks import (check_config_files, check_data, check_logger_dirs, check_run_dirs, keep_metrics_for_resume,
                                 merge_resumed_metrics)
    from diffmvae.checkpoint import read_training_checkpoint
    from diffmvae.io import DiffMVAEError

    kept_metrics: list = []  # a resumed run's metrics.csv, set aside while Lightning's logger starts a new one

    class DiffMVAECLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            if self.subcommand != "fit":
                return
            loggers = self.config[self.subcommand].trainer.get("logger")
            if self.config[self.subcommand].get("ckpt_path") is None:
                check_logger_dirs(loggers)
            else:
                kept_metrics[:] = [keep_metrics_for_resume(loggers)]

        def _parse_ckpt_path(self) -> None:
            # LightningCLI reads a --ckpt_path file for the hyperparameters it may hold, before anything is written: read
            # it here instead (weights_only=True), so a truncated, crafted or wrong file is one line and the run folder
            # is left as it was. Lightning's names ("last", ...) and remote paths are Lightning's to resolve.
            subcommand = self.config.get("subcommand")
            path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if not path or "://" in str(path) or not Path(path).is_file():
                return super()._parse_ckpt_path()
            if read_training_checkpoint(path).get("hyper_parameters"):
                super()._parse_ckpt_path()  # a module that saved hyperparameters: Lightning merges them into the config

        def after_fit(self) -> None:
            if kept_metrics and kept_metrics[0]:
                merge_resumed_metrics(*kept_metrics.pop(), self.trainer.global_step)

        def before_fit(self) -> None:
            cfg = self.config[self.subcommand]
            ckpt_cb = self.trainer.checkpoint_callback
            last = Path(ckpt_cb.dirpath) / "last.ckpt" if ckpt_cb is not None and ckpt_cb.dirpath else None
            if cfg.get("ckpt_path") is None and last is not None and last.exists():
                raise DiffMVAEError(
                    f"{last} already exists; resume with --ckpt_path {last} or write elsewhere with "
                    f"--trainer.default_root_dir/--trainer.callbacks (nothing was overwritten)"
                )
            check_run_dirs(self.trainer)
            check_data(self.model.model, self.datamodule)
            self.model.run_config = {
                "model": cfg.model.as_dict(),
                "data": cfg.data.as_dict(),
                "seed_everything": cfg.get("seed_everything"),
            }

    check_config_files(argv)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # MLflow 3 refuses its file store (`tracking_uri: file:...`) unless this is set; the file store is what a run
    # without a tracking server uses. A value the user set wins.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        DiffMVAECLI(
            args=argv,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
        )
    except ArgumentError as e:
        raise _config_error(e) from e
    except ModuleNotFoundError as e:
        raise DiffMVAEError(f"{one_line(e)} (a logger needs its extra: pip install 'diffmvae[tensorboard]' or 'diffmvae[mlflow]')") from e
    finally:
        if kept_metrics and kept_metrics[0]:  # the resume failed: its history goes back into metrics.csv
            merge_resumed_metrics(*kept_metrics.pop(), None)
    return 0


def _sample(argv: list[str]) -> int:
    import torch

    from diffmvae.checkpoint import load_run
    from diffmvae.io import DiffMVAEError
    from diffmvae.io import check_out_dir
    from diffmvae.sampling import choose_prior, generate_from_subset, parse_given, sampling_record, select_examples, write_samples

    p = argparse.ArgumentParser(prog="diffmvae sample", description="Generate missing modalities from any subset.")
    p.add_argument("--ckpt", required=True, help="checkpoint written by `diffmvae fit`, or a model folder (`diffmvae export`)")
    p.add_argument("--given", default="none", help="observed modalities, comma separated, or 'none' (prior)")
    p.add_argument("--n", type=int, default=64, help="number of examples")
    p.add_argument("--out", required=True, help="output directory (grid.png, samples.npz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="where observed examples come from")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--prior", default="auto", choices=("auto", "score", "gaussian"),
                   help="prior for --given none: the score prior (default when the model has one) or N(0, I)")
    p.add_argument("--prior-ckpt", default=None, help="score prior checkpoint (default: CKPT's name with .prior.ckpt)")
    p.add_argument("--prior-steps", type=int, default=None, help="DDIM steps of the score prior (default: its own, 50)")
    add_sampling_arguments(p)
    add_composition_arguments(p)
    add_device_arguments(p)
    args = p.parse_args(argv)
    device = pick_device(args.accelerator, args.devices)
    composition = composition_from(args)
    if args.n < 1:
        raise DiffMVAEError(f"--n must be >= 1, got {args.n}")
    check_out_dir(args.out)
    start = time.perf_counter()
    run = load_run(args.ckpt, use_ema=not args.no_ema, device=device)
    model = run.module.model
    given = parse_given(args.given, model.modalities)
    sampling = sampling_settings(args, run.module)
    if composition is not None:
        if not given:
            raise DiffMVAEError("--compose needs observed modalities (--given)")
        model.check_composition(composition, given, sampling)
    prior, prior_name = choose_prior(args.prior, args.prior_ckpt, args.ckpt, model, steps=args.prior_steps) if not given else (None, None)
    generator = torch.Generator().manual_seed(args.seed)
    batch = select_examples(run.datamodule.dataset(args.split), args.n, generator)
    with precision(args.precision, device):
        samples = generate_from_subset(model, batch, given, args.n, generator=generator, sampling=sampling, prior=prior,
                                       composition=composition)
    labels = batch.get("label") if given else None  # unconditional samples have no true label
    texts = {m: run.datamodule.decode_text(m, samples[m]["input_ids"]) for m, spec in run.datamodule.specs.items()
             if spec.is_text and m in samples}
    paths = write_samples(args.out, samples, run.datamodule.specs, given, labels if isinstance(labels, torch.Tensor) else None,
                          prior=prior_name, sampling=sampling_record(model, sampling, composition), texts=texts)
    log.info("wrote %s in %.1fs", ", ".join(map(str, paths)), time.perf_counter() - start)
    return 0


def _prior(argv: list[str]) -> int:
    from diffmvae.io import DiffMVAEError

    if not argv or argv[0] != "fit":
        raise DiffMVAEError("usage: diffmvae prior fit --ckpt CKPT [--config YAML] [--out PATH] (the only prior command is `fit`)")
    from jsonargparse import ActionConfigFile, ArgumentParser

    from diffmvae.latent_prior import AggregateFamily, fit_prior_for_checkpoint
    from priors import ScorePrior
    from priors.training import PriorFitConfig

    p = ArgumentParser(prog="diffmvae prior fit", exit_on_error=False,
                       description="Fit the auxiliary latent score prior to a trained checkpoint's aggregate posterior.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML with prior / fit / family keys")
    p.add_argument("--ckpt", type=str, required=True, help="model checkpoint written by `diffmvae fit` (only read)")
    p.add_argument("--out", type=Optional[str], default=None, help="prior checkpoint (default: CKPT's name with .prior.ckpt)")
    p.add_argument("--overwrite", type=bool, default=False, help="replace an existing prior checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", type=AggregateFamily, default="mixture", help="aggregate posterior: mixture (MoPoE q(z|X)) or joint")
    p.add_argument("--split", type=Literal["train", "val", "test"], default="train")
    p.add_class_arguments(ScorePrior, "prior", skip={"latent_dim"}, instantiate=False)
    p.add_class_arguments(PriorFitConfig, "fit", instantiate=False)
    add_device_arguments(p)
    cfg = _parse_config(p, argv[1:])
    device = pick_device(cfg.accelerator, cfg.devices)
    seed_torch(cfg.seed)
    start = time.perf_counter()
    path = fit_prior_for_checkpoint(
        cfg.ckpt, prior_args=cfg.prior.as_dict(), fit_args=cfg.fit.as_dict(), out=cfg.out, overwrite=cfg.overwrite,
        family=cfg.family, split=cfg.split, seed=cfg.seed, device=device, precision=cfg.precision,
    )
    log.info("wrote %s in %.0fs", path, time.perf_counter() - start)
    return 0


def _evaluate(argv: list[str]) -> int:
    from diffmvae.evaluation.command import evaluate_checkpoints
    from diffmvae.evaluation.suite import PARTS, EvalSettings

    p = argparse.ArgumentParser(prog="diffmvae evaluate", description="Coherence, Fréchet distances, latent probes and ELBO of trained models.")
    p.add_argument("--ckpt", action="append", required=True, help="checkpoint to evaluate; repeat for several models")
    p.add_argument("--out", required=True, help="output directory (metrics.json, .csv, .md, .png)")
    p.add_argument("--names", default=None, help="model names, comma separated (default: run directory names)")
    p.add_argument("--n-samples", type=int, default=None, help="test examples to condition on (default: the whole test split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-subsets", type=int, default=10, help="subsets per size k, a seeded random sample when there are more")
    p.add_argument("--probe-train", type=int, default=2000, help="training examples of the latent linear probes")
    p.add_argument("--classifiers", default=None, help="classifier file (default: runs/classifiers/<data key>.pt, trained if missing)")
    p.add_argument("--prior", default="auto", choices=("auto", "score", "gaussian"), help="prior of unconditional samples")
    p.add_argument("--parts", default=",".join(PARTS), help=f"what to measure, comma separated: {', '.join(PARTS)} (default: all)")
    add_sampling_arguments(p)
    add_composition_arguments(p)
    p.add_argument("--inception-weights", default=None,
                   help="local Inception-v3 weights file: Fréchet distances in Inception space (needs the 'fid' extra)")
    add_device_arguments(p)
    args = p.parse_args(argv)
    device = pick_device(args.accelerator, args.devices)
    composition = composition_from(args)
    seed_torch(args.seed)
    start = time.perf_counter()
    settings = EvalSettings(n_samples=args.n_samples, seed=args.seed, max_subsets=args.max_subsets, probe_train=args.probe_train,
                            inception_weights=args.inception_weights, parts=tuple(p for p in args.parts.split(",") if p))
    names = args.names.split(",") if args.names else None
    paths = evaluate_checkpoints(args.ckpt, args.out, settings=settings, names=names, classifiers=args.classifiers, prior=args.prior,
                                 sampling=sampling_overrides(args), device=device, precision=args.precision, composition=composition)
    log.info("wrote %s in %.0fs", ", ".join(map(str, paths)), time.perf_counter() - start)
    return 0


def _export(argv: list[str]) -> int:
    from diffmvae.export import export_model

    p = argparse.ArgumentParser(prog="diffmvae export", description="Write a trained run as a model folder: model.safetensors (EMA "
                                "weights), config.yaml, README.md (model card), prior.safetensors when a score prior exists.")
    p.add_argument("--ckpt", required=True, help="checkpoint written by `diffmvae fit`")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--prior-ckpt", default=None, help="score prior to include (default: the one beside CKPT, if any)")
    p.add_argument("--evaluation", default=None, help="a `diffmvae evaluate` output folder whose table goes into the model card")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = p.parse_args(argv)
    out = export_model(args.ckpt, args.out, prior_ckpt=args.prior_ckpt, evaluation=args.evaluation, overwrite=args.overwrite)
    log.info("wrote %s (%s)", out, ", ".join(sorted(f.name for f in out.iterdir())))
    return 0


def _classifiers(argv: list[str]) -> int:
    from diffmvae.io import DiffMVAEError

    if not argv or argv[0] != "fit":
        raise DiffMVAEError("usage: diffmvae classifiers fit --config YAML [--out PATH] (the only classifiers command is `fit`)")
    import lightning as L
    from jsonargparse import ActionConfigFile, ArgumentParser

    from diffmvae.evaluation.command import fit_classifiers

    p = ArgumentParser(prog="diffmvae classifiers fit", exit_on_error=False,
                       description="Train the per-modality judge classifiers of `diffmvae evaluate` on real data.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML with data / epochs / ... keys")
    p.add_subclass_arguments(L.LightningDataModule, "data", instantiate=False, help="the real data, as in a fit config")
    p.add_argument("--out", type=Optional[str], default=None, help="classifier file (default: runs/classifiers/<data key>.pt)")
    p.add_argument("--overwrite", type=bool, default=False)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    add_device_arguments(p)
    cfg = _parse_config(p, argv[1:])
    device = pick_device(cfg.accelerator, cfg.devices)
    seed_torch(cfg.seed)
    start = time.perf_counter()
    with precision(cfg.precision, device):
        path = fit_classifiers(cfg.data.as_dict(), cfg.out, overwrite=cfg.overwrite, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                               seed=cfg.seed, device=device)
    log.info("wrote %s in %.0fs", path, time.perf_counter() - start)
    return 0


def _pipeline(argv: list[str]) -> int:
    import yaml

    from diffmvae.io import DiffMVAEError
    from diffmvae.pipeline import load_pipeline, run_pipeline

    p = argparse.ArgumentParser(prog="diffmvae pipeline", description="A data set's experiment pipeline: fit, prior fit, evaluate, "
                                "table and plots; finished stages are skipped, so running it again resumes.")
    p.add_argument("--config", required=True, help="pipeline YAML, e.g. experiments/polydigits/pipeline.yaml")
    p.add_argument("--out", default=None, help="output folder (default: the YAML's 'out')")
    p.add_argument("--only", action="append", default=[], help="run only this run's stages (repeatable); the report covers all")
    p.add_argument("--dry-run", action="store_true", help="list the stages still to run and their commands, run nothing")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set KEY (a.b.c, or **.name at any depth) in every derived fit config; VALUE is YAML (repeatable)")
    p.add_argument("--fit-arg", action="append", default=[], help="an argument appended to every fit, e.g. --fit-arg=--data.init_args.root=DIR")
    p.add_argument("--prior-arg", action="append", default=[], help="an argument appended to every prior fit, e.g. --prior-arg=--fit.steps=10")
    args = p.parse_args(argv)
    start = time.perf_counter()
    spec = load_pipeline(args.config, args.out)
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise DiffMVAEError(f"--set takes KEY=VALUE, got {item!r}")
        spec.overrides[key] = yaml.safe_load(value)
    spec.fit_args += tuple(args.fit_arg)
    spec.prior_args = tuple(args.prior_arg)
    files = run_pipeline(spec, only=args.only, dry_run=args.dry_run)
    if files:
        log.info("pipeline done in %.0fs: %s", time.perf_counter() - start, ", ".join(map(str, files)))
    return 0


def seed_torch(seed: int) -> None:
    """Seed the global RNG at a command's entry: module initialisation (PyTorch's initialisers take no generator)
    and dropout draw from it. The library itself never seeds it; its draws come from generators it is passed."""
    import torch

    torch.manual_seed(seed)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from diffmvae.io import DiffMVAEError

    configure_parsing()

    commands = {
        "sample": _sample, "prior": _prior, "evaluate": _evaluate, "classifiers": _classifiers, "export": _export, "unite": unite_command,
        "pipeline": _pipeline,
        **{c: _lightning for c in LIGHTNING_SUBCOMMANDS},
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: diffmvae {{{','.join(commands)}}} ...  (diffmvae COMMAND --help for its options)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return commands[argv[0]](argv if argv[0] in LIGHTNING_SUBCOMMANDS else argv[1:])
    except (DiffMVAEError, ValueError, KeyError, OSError) as e:
        if os.environ.get("DIFFMVAE_DEBUG"):
            raise
        # An OSError the library did not name (a full disk or a read-only folder met inside Lightning or a logger).
        message = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else one_line(e)
        print(f"diffmvae: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
