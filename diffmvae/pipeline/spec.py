"""A pipeline YAML read and checked, and the fit configs derived from it."""

from __future__ import annotations

import copy
import logging
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffmvae.io import DiffMVAEError, read_yaml

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
    """``config`` writing into ``folder``: ``default_root_dir`` (from which ``fit`` derives the logger's and the
    checkpoints' folders), and the folders a config names itself: a CSV/TensorBoard logger's ``save_dir/name/version``
    and a checkpoint callback's ``dirpath`` (``folder/checkpoints``)."""
    cfg = copy.deepcopy(config)
    trainer = cfg.setdefault("trainer", {})
    trainer["default_root_dir"] = str(folder)
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and "init_args" in logger and "save_dir" in logger["init_args"]:
            logger["init_args"].update(save_dir=str(folder.parent), name=folder.name, version="")
    for cb in _callbacks(trainer):
        if isinstance(cb, dict) and cb.get("class_path", "").endswith("ModelCheckpoint") and (cb.get("init_args") or {}).get("dirpath"):
            cb["init_args"]["dirpath"] = str(folder / "checkpoints")
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
    """``config`` starting from the weights of the run at ``ckpt`` (:class:`~diffmvae.training.WarmStart`): a
    :class:`~diffmvae.training.FeedForwardWarmup` stage is what that run already trained, so it is cut from the
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
    callbacks.insert(0, {"class_path": "diffmvae.training.WarmStart", "init_args": {"ckpt": str(ckpt)}})
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
