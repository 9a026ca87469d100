"""Per-dataset experiment pipelines: fit → prior fit → evaluate → a comparison table and plots, resumable stage by
stage (``diffmvae pipeline --config experiments/<dataset>/pipeline.yaml``).

A pipeline YAML names the models to train (each a ``diffmvae fit`` config, with overrides), what to evaluate, and
optionally a sweep (every model trained once per value: seed 003 Fig. 7 trains each model on 2, 3, 4 and 5
modalities). Every stage is one ``diffmvae`` command run in a subprocess, exactly as a user would type it; its
arguments are logged and the derived fit configs are written under ``OUT/configs/``, so every number in the final
table can be reproduced by hand. A stage that finished leaves ``OUT/<run>/<stage>.done.json`` (written last, by a
rename) and is never redone; a fit interrupted half-way resumes from its ``last.ckpt``.

Pipeline keys::

    out: runs/pipelines/polydigits          # everything is written here
    classifiers: null                       # judge file of every evaluation (default: the data's cached set)
    sweep: {name: M, values: {2: [m0, m1], 3: [m0, m1, m2]}}   # optional; values are modality lists (``keep``)
    models:
      mopoe: {config: experiments/polydigits/quickstart.yaml, args: [--trainer.max_steps=1500],
              prior: experiments/polydigits/prior.yaml}
      star:  {config: experiments/polydigits/diffmvae_star.yaml, warm_start: mopoe, prior: ...}
    evaluate: {n_samples: 360, max_subsets: 1, args: [--steps, "50"]}
    priors: [score, gaussian]               # unconditional samples under each (score needs a model's prior)
    fit_args: [--data.init_args.root=/data/CUB_200_2011]   # appended to every fit
    set: {"**.latent_dim": 64}              # keys set in every derived fit config (dotted paths, or **.name anywhere)
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffmvae.io import DiffMVAEError, atomic_write, read_yaml

log = logging.getLogger(__name__)

PRIORS = ("score", "gaussian")
MODEL_KEYS = {"config", "args", "prior", "prior_args", "warm_start"}
TOP_KEYS = {"out", "classifiers", "sweep", "models", "evaluate", "priors", "fit_args", "set"}
EVALUATE_KEYS = {"n_samples", "max_subsets", "seed", "args"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: Path
    args: tuple[str, ...] = ()
    prior: Path | None = None
    prior_args: tuple[str, ...] = ()
    warm_start: str | None = None


@dataclass(frozen=True)
class Run:
    """One model trained at one sweep value: its folder is ``OUT/<name>``."""

    name: str
    model: ModelSpec
    sweep_value: Any = None
    keep: tuple[str, ...] | None = None


@dataclass
class PipelineSpec:
    out: Path
    models: dict[str, ModelSpec]
    classifiers: str | None = None
    sweep_name: str | None = None
    sweep: dict[Any, tuple[str, ...]] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    priors: tuple[str, ...] = ("score", "gaussian")
    fit_args: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    prior_args: tuple[str, ...] = ()  # appended to every prior fit

    def runs(self) -> list[Run]:
        """Every (model, sweep value) pair, models in file order within each sweep value."""
        if not self.sweep:
            return [Run(name, spec) for name, spec in self.models.items()]
        return [Run(f"{name}_{self.sweep_name}{value}", spec, value, keep) for value, keep in self.sweep.items() for name, spec in self.models.items()]

    def run_of(self, model: str, sweep_value: Any) -> Run:
        return next(r for r in self.runs() if r.model.name == model and r.sweep_value == sweep_value)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise DiffMVAEError(f"{where} must be a list of command-line arguments, got {value!r}")
    return tuple(str(v) for v in value)


def load_pipeline(path: str | os.PathLike, out: str | None = None) -> PipelineSpec:
    """Read and check a pipeline YAML (one-line errors naming the file and key); relative config paths are taken
    from the working directory, as on the ``diffmvae fit`` command line."""
    path = Path(path)
    raw = read_yaml(path, "pipeline file")
    if not isinstance(raw, dict):
        raise DiffMVAEError(f"pipeline file {path} must hold a mapping with keys out, models, ...")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise DiffMVAEError(f"pipeline file {path}: unknown key {unknown[0]!r} (expected {', '.join(sorted(TOP_KEYS))})")
    if not raw.get("out") and out is None:
        raise DiffMVAEError(f"pipeline file {path}: 'out' (the output folder) is missing")
    models_raw = raw.get("models")
    if not isinstance(models_raw, dict) or not models_raw:
        raise DiffMVAEError(f"pipeline file {path}: 'models' must map model names to {{config: FIT_YAML, ...}}")
    models = {}
    for name, m in models_raw.items():
        where = f"pipeline file {path}: models.{name}"
        if not isinstance(m, dict) or "config" not in m:
            raise DiffMVAEError(f"{where} needs a 'config' (a `diffmvae fit` YAML)")
        bad = sorted(set(m) - MODEL_KEYS)
        if bad:
            raise DiffMVAEError(f"{where}: unknown key {bad[0]!r} (expected {', '.join(sorted(MODEL_KEYS))})")
        config = Path(m["config"]).resolve()  # relative to the working directory, as on the command line
        if not config.is_file():
            raise DiffMVAEError(f"{where}.config: {config} does not exist")
        prior = Path(m["prior"]).resolve() if m.get("prior") else None
        if prior is not None and not prior.is_file():
            raise DiffMVAEError(f"{where}.prior: {prior} does not exist")
        if m.get("warm_start") is not None and m["warm_start"] not in models:
            raise DiffMVAEError(f"{where}.warm_start names {m['warm_start']!r}, which is not a model listed before it")
        models[name] = ModelSpec(name, config, _strings(m.get("args"), f"{where}.args"), prior,
                                 _strings(m.get("prior_args"), f"{where}.prior_args"), m.get("warm_start"))
    sweep_name, sweep = None, {}
    if raw.get("sweep") is not None:
        s = raw["sweep"]
        if not isinstance(s, dict) or set(s) != {"name", "values"} or not isinstance(s["values"], dict) or not s["values"]:
            raise DiffMVAEError(f"pipeline file {path}: 'sweep' must be {{name: NAME, values: {{VALUE: [modalities]}}}}")
        sweep_name = str(s["name"])
        for value, keep in s["values"].items():
            if not isinstance(keep, list) or not keep or not all(isinstance(k, str) for k in keep):
                raise DiffMVAEError(f"pipeline file {path}: sweep.values.{value} must be a list of modality names")
            sweep[value] = tuple(keep)
    evaluate = dict(raw.get("evaluate") or {})
    bad = sorted(set(evaluate) - EVALUATE_KEYS)
    if bad:
        raise DiffMVAEError(f"pipeline file {path}: evaluate.{bad[0]} is not a setting (expected {', '.join(sorted(EVALUATE_KEYS))})")
    evaluate["args"] = _strings(evaluate.get("args"), f"pipeline file {path}: evaluate.args")
    priors = tuple(raw.get("priors") or ("score", "gaussian"))
    if any(p not in PRIORS for p in priors):
        raise DiffMVAEError(f"pipeline file {path}: priors must be among {', '.join(PRIORS)}, got {list(priors)}")
    overrides = raw.get("set") or {}
    if not isinstance(overrides, dict):
        raise DiffMVAEError(f"pipeline file {path}: 'set' must map keys of the fit configs (a.b.c, or **.name) to values")
    return PipelineSpec(Path(out or raw["out"]), models, raw.get("classifiers"), sweep_name, sweep, evaluate, priors,
                        _strings(raw.get("fit_args"), f"pipeline file {path}: fit_args"), dict(overrides), path)


# ---------------------------------------------------------------------------------------------------------- configs
def _callbacks(trainer: dict) -> list:
    callbacks = trainer.get("callbacks") or []
    return callbacks if isinstance(callbacks, list) else [callbacks]


def relocate(config: dict, folder: Path) -> dict:
    """``config`` writing into ``folder``: ``default_root_dir``, a CSV/TensorBoard logger's ``save_dir/name/version``
    and the checkpoint callback's ``dirpath`` (``folder/checkpoints``)."""
    cfg = copy.deepcopy(config)
    trainer = cfg.setdefault("trainer", {})
    trainer["default_root_dir"] = str(folder)
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and "init_args" in logger and "save_dir" in logger["init_args"]:
            logger["init_args"].update(save_dir=str(folder.parent), name=folder.name, version="")
    for cb in _callbacks(trainer):
        if isinstance(cb, dict) and cb.get("class_path", "").endswith("ModelCheckpoint"):
            cb.setdefault("init_args", {})["dirpath"] = str(folder / "checkpoints")
    return cfg


def keep_modalities(config: dict, keep: Sequence[str]) -> dict:
    """``config`` trained on the modalities ``keep`` only: the data module's ``keep`` and the model's encoders and
    decoders of the others left out (a decoder of several modalities keeps those it still has)."""
    cfg = copy.deepcopy(config)
    data = cfg.get("data", {}).setdefault("init_args", {})
    data["keep"] = list(keep)
    model = cfg["model"]["init_args"]["model"]["init_args"]
    model["encoders"] = {m: e for m, e in model["encoders"].items() if m in keep}
    decoders = {}
    for name, dec in model["decoders"].items():
        listed = dec.get("init_args", {}).get("modalities")
        if listed:
            left = [m for m in listed if m in keep]
            if left:
                dec = copy.deepcopy(dec)
                dec["init_args"]["modalities"] = left
                decoders[name] = dec
        elif name in keep:
            decoders[name] = dec
    model["decoders"] = decoders
    return cfg


def set_key(config: dict, key: str, value: Any) -> int:
    """Set ``key`` in a (YAML) config in place: a dotted path ``a.b.c``, or ``**.name`` for every mapping entry called
    ``name`` at any depth (e.g. ``**.latent_dim`` for every encoder's and decoder's). Returns how many were set; a
    dotted path whose parent does not exist sets nothing."""
    if key.startswith("**."):
        name, count = key[3:], 0
        stack: list[Any] = [config]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if name in node:
                    node[name] = copy.deepcopy(value)
                    count += 1
                stack += [v for k, v in node.items() if k != name]
            elif isinstance(node, list):
                stack += node
        return count
    *parents, last = key.split(".")
    node = config
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            return 0
        node = node[part]
    if not isinstance(node, dict):
        return 0
    node[last] = copy.deepcopy(value)
    return 1


def warm_started(config: dict, ckpt: Path) -> dict:
    """``config`` starting from the weights of the run at ``ckpt`` (:class:`~diffmvae.callbacks.WarmStart`): a
    :class:`~diffmvae.callbacks.FeedForwardWarmup` stage is what that run already trained, so it is cut from the
    step budget and its ``freeze`` applies from the first step."""
    cfg = copy.deepcopy(config)
    trainer = cfg.setdefault("trainer", {})
    callbacks = _callbacks(trainer)
    for cb in callbacks:
        if isinstance(cb, dict) and cb.get("class_path", "").endswith("FeedForwardWarmup"):
            steps = int(cb.get("init_args", {}).get("steps", 0))
            cb["init_args"]["steps"] = 0
            if trainer.get("max_steps", -1) > 0:
                trainer["max_steps"] -= steps
    callbacks.insert(0, {"class_path": "diffmvae.callbacks.WarmStart", "init_args": {"ckpt": str(ckpt)}})
    trainer["callbacks"] = callbacks
    return cfg


# ------------------------------------------------------------------------------------------------------------ stages
def last_ckpt(spec: PipelineSpec, run: Run) -> Path:
    return spec.out / run.name / "checkpoints" / "last.ckpt"


def stage_marker(spec: PipelineSpec, run_name: str, stage: str) -> Path:
    return spec.out / run_name / f"{stage}.done.json"


def derived_config(spec: PipelineSpec, run: Run) -> dict:
    config = read_yaml(run.model.config, "fit config")
    config = relocate(config, spec.out / run.name)
    for key, value in spec.overrides.items():
        if not set_key(config, key, value):
            log.warning("set: %s matches nothing in %s", key, run.model.config)
    if run.keep is not None:
        config = keep_modalities(config, run.keep)
    if run.model.warm_start:
        config = warm_started(config, last_ckpt(spec, spec.run_of(run.model.warm_start, run.sweep_value)))
    return config


@dataclass(frozen=True)
class Stage:
    run: str
    name: str
    argv: tuple[str, ...]
    prepare: Callable[[], None] | None = None


def stages(spec: PipelineSpec) -> list[Stage]:
    """Every stage in order: per run ``fit``, ``prior`` (when the model names a prior config), then ``evaluate``
    (conditional and unconditional metrics with the first available prior) and ``unconditional_<prior>`` for the other
    priors; the report comes after them all (:func:`run_pipeline`)."""
    out: list[Stage] = []
    for run in spec.runs():
        folder, ckpt = spec.out / run.name, last_ckpt(spec, run)
        config_path = spec.out / "configs" / f"{run.name}.yaml"

        def write_config(run: Run = run, config_path: Path = config_path) -> None:
            text = yaml.safe_dump(derived_config(spec, run), sort_keys=False)
            atomic_write(config_path, lambda tmp: tmp.write_text(text))

        fit = ["fit", "--config", str(config_path), *spec.fit_args, *run.model.args]
        out.append(Stage(run.name, "fit", tuple(fit), write_config))
        priors = [p for p in spec.priors if p == "gaussian" or run.model.prior is not None]
        if run.model.prior is not None:
            argv = ["prior", "fit", "--ckpt", str(ckpt), "--config", str(run.model.prior), "--overwrite", "true", *run.model.prior_args, *spec.prior_args]
            out.append(Stage(run.name, "prior", tuple(argv)))
        ev = spec.evaluate
        common = ["--ckpt", str(ckpt), "--names", run.name, "--seed", str(ev.get("seed", 0)), *ev["args"]]
        for key in ("n_samples", "max_subsets"):
            if ev.get(key) is not None:
                common += [f"--{key.replace('_', '-')}", str(ev[key])]
        if spec.classifiers:
            common += ["--classifiers", str(spec.classifiers)]
        for i, prior in enumerate(priors):
            parts = [] if i == 0 else ["--parts", "unconditional"]
            name = "evaluate" if i == 0 else f"unconditional_{prior}"
            out.append(Stage(run.name, name, ("evaluate", *common, "--prior", prior, "--out", str(folder / name), *parts)))
    return out


def diffmvae_command(argv: Sequence[str]) -> list[str]:
    """The subprocess that runs ``diffmvae ARGV`` with this interpreter."""
    return [sys.executable, "-m", "diffmvae.cli", *argv]


Launcher = Callable[[Sequence[str]], int]


def subprocess_launcher(env: Mapping[str, str] | None = None) -> Launcher:
    """Run ``diffmvae ARGV`` in a fresh interpreter (the default: each stage starts clean, as from a shell)."""
    def launch(argv: Sequence[str]) -> int:
        return subprocess.run(diffmvae_command(argv), env={**os.environ, **(env or {})}, check=False).returncode

    return launch


def run_stage(spec: PipelineSpec, stage: Stage, launcher: Launcher | None = None) -> float:
    """Run one stage (by default its command in a subprocess) and write its marker; returns the seconds it took. A fit
    that left a ``last.ckpt`` behind resumes from it."""
    if stage.prepare is not None:
        stage.prepare()
    argv = list(stage.argv)
    if stage.name == "fit":
        ckpt = spec.out / stage.run / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            log.info("%s: resuming the interrupted fit from %s", stage.run, ckpt)
            argv += ["--ckpt_path", str(ckpt)]
    log.info("[%s] diffmvae %s", stage.run, " ".join(shlex.quote(a) for a in argv))
    start = time.perf_counter()
    code = (launcher or subprocess_launcher())(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise DiffMVAEError(f"pipeline stage {stage.run}/{stage.name} failed (exit {code}); its output is above; "
                            f"run the pipeline again to resume from this stage")
    record = {"run": stage.run, "stage": stage.name, "argv": argv, "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(stage_marker(spec, stage.run, stage.name), lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return seconds


def run_pipeline(spec: PipelineSpec, *, only: Sequence[str] = (), dry_run: bool = False, launcher: Launcher | None = None) -> list[Path]:
    """Run every stage not yet done (or only the runs named in ``only``), then write the report
    (:func:`write_pipeline_report`); returns the report's files (none on a dry run). ``launcher`` runs one
    ``diffmvae`` command line and returns its exit status (default: :func:`subprocess_launcher`)."""
    todo = stages(spec)
    names = {r.name for r in spec.runs()}
    unknown = [o for o in only if o not in names]
    if unknown:
        raise DiffMVAEError(f"--only names {unknown[0]!r}, which is not a run of this pipeline ({', '.join(sorted(names))})")
    for stage in todo:
        if only and stage.run not in only:
            continue
        if stage_marker(spec, stage.run, stage.name).is_file():
            log.info("[%s] %s: done before, skipped", stage.run, stage.name)
            continue
        if dry_run:
            log.info("[%s] %s: diffmvae %s", stage.run, stage.name, " ".join(shlex.quote(a) for a in stage.argv))
            continue
        seconds = run_stage(spec, stage, launcher)
        log.info("[%s] %s done in %.0fs", stage.run, stage.name, seconds)
    if dry_run:
        return []
    from diffmvae.pipeline_report import write_pipeline_report

    return write_pipeline_report(spec)
