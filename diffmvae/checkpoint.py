"""Rebuild a trained run from its checkpoint without running pickled code.

``diffmvae fit`` stores the run's model and data configs (``class_path`` / ``init_args`` dicts, as LightningCLI
parsed them) in ``checkpoint["diffmvae_config"]``; loading reads the file with ``weights_only=True`` and
instantiates only classes from this library's packages.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from diffmvae.io import DiffMVAEError, atomic_write, load_tensors, torch_save

ALLOWED_PACKAGES = ("diffmvae", "encoders", "decoders", "priors")


def _import_class(class_path: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    if module_name.split(".")[0] not in ALLOWED_PACKAGES:
        raise DiffMVAEError(f"class_path {class_path!r} is outside the packages {', '.join(ALLOWED_PACKAGES)}")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise DiffMVAEError(f"class_path {class_path!r} cannot be imported: {e}") from e


def instantiate(spec: Any) -> Any:
    """Recursively build every ``{"class_path": ..., "init_args": {...}}`` in ``spec``."""
    if isinstance(spec, dict):
        if "class_path" in spec:
            cls = _import_class(spec["class_path"])
            return cls(**{k: instantiate(v) for k, v in (spec.get("init_args") or {}).items()})
        return {k: instantiate(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [instantiate(v) for v in spec]
    return spec


def build_run(config: dict[str, Any], failure: str) -> tuple[Any, Any]:
    """The LightningModule and the DataModule of a run config; a config that no longer builds is ``failure (why)``."""
    try:
        return instantiate(config["model"]), instantiate(config["data"])
    except (TypeError, ValueError) as e:
        raise DiffMVAEError(f"{failure} ({e})") from e


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer with this library's file rules, for local paths (remote ones go to
    Lightning's own). Writing: to a temporary file beside the target, renamed onto it — Lightning's writer builds the
    file in the system's temporary folder and moves it, which between two file systems is a copy that a full disk
    cuts short, leaving a truncated ``last.ckpt`` where the good one was; a failed write here is one line and the
    previous checkpoint stays whole. Reading (``--ckpt_path``): ``weights_only=True``, so a crafted file never runs
    code, and an unreadable one is one line. :meth:`TrainingModule.setup <diffmvae.TrainingModule.setup>` installs it
    in place of Lightning's default."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(path, lambda tmp: torch_save(checkpoint, tmp))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_training_checkpoint(path)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint Lightning can resume from (``--ckpt_path``), read with ``weights_only=True``; one line otherwise."""
    checkpoint = read_checkpoint(path)
    if "pytorch-lightning_version" not in checkpoint:
        raise DiffMVAEError(f"checkpoint {path} is not a training checkpoint (a prior or classifier file?); --ckpt_path resumes a "
                            "`diffmvae fit` run from its checkpoints/last.ckpt")
    return checkpoint


def install_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Use :class:`AtomicCheckpointIO` when the trainer's strategy has Lightning's default checkpoint writer (a
    writer the user configured, or a sharded strategy's own, is left alone)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-line errors for a missing or unreadable file."""
    ckpt = load_tensors(path, "checkpoint", unreadable="is not a readable checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DiffMVAEError(f"checkpoint {path} has no 'state_dict'; is it a Lightning checkpoint?")
    return ckpt


@dataclass
class LoadedRun:
    """A trained run: the LightningModule (EMA weights loaded, eval mode), its DataModule and the raw config."""

    module: L.LightningModule
    datamodule: L.LightningDataModule
    config: dict[str, Any]
    checkpoint: dict[str, Any]


def load_run(path: str | Path, *, use_ema: bool = True, device: torch.device | str | None = None) -> LoadedRun:
    """Rebuild the model and data of a ``diffmvae fit`` checkpoint, or of a model folder (``diffmvae export``), on
    ``device`` (default: the CPU)."""
    run = load_folder(path) if Path(path).is_dir() else _load_checkpoint(path, use_ema)
    if device is not None:
        run.module.to(device)
    return run


def _load_checkpoint(path: str | Path, use_ema: bool) -> LoadedRun:
    ckpt = read_checkpoint(path)
    config = ckpt.get("diffmvae_config")
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise DiffMVAEError(f"checkpoint {path} has no run config; it was not written by `diffmvae fit`")
    if config["model"].get("class_path") == "diffmvae.DiffMVAE":
        raise DiffMVAEError(f"checkpoint {path} was written by diffmvae 0.1 (model class diffmvae.DiffMVAE), whose configs this version "
                            "no longer reads; retrain it with a current config (see the README's 'Upgrading from 0.1')")
    module, datamodule = build_run(config, f"checkpoint {path}: its config no longer builds a model")
    try:
        module.load_state_dict(ckpt["state_dict"])
        module.on_load_checkpoint(ckpt)
        if use_ema and "ema_state_dict" in ckpt:
            module.model.load_state_dict(ckpt["ema_state_dict"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise DiffMVAEError(f"checkpoint {path} does not match its model config ({first[:200]})") from e
    module.eval()
    return LoadedRun(module, datamodule, config, ckpt)


def load_folder(path: str | Path) -> LoadedRun:
    """Rebuild a model folder written by ``diffmvae export``: ``config.yaml`` (safe YAML, library classes only) and
    ``model.safetensors`` (checked against the sha256 the config records). No pickle is read."""
    import yaml

    from diffmvae.export import CONFIG, FOLDER_FORMAT, WEIGHTS
    from diffmvae.io import file_sha256, read_safetensors

    path = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise DiffMVAEError(f"model folder {path} has no {name}; write it with `diffmvae export`")
    try:
        config = yaml.safe_load((path / CONFIG).read_text())
    except yaml.YAMLError as e:
        raise DiffMVAEError(f"{path / CONFIG} is not valid YAML ({' '.join(str(e).split())[:200]})") from e
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT or "model" not in config or "data" not in config:
        raise DiffMVAEError(f"{path / CONFIG} is not a diffmvae model-folder config (format {FOLDER_FORMAT!r} with model and data)")
    expected = (config.get("files") or {}).get(WEIGHTS, {}).get("sha256")
    if expected and file_sha256(path / WEIGHTS) != expected:
        raise DiffMVAEError(f"{path / WEIGHTS} does not match the sha256 in {CONFIG}: the file was changed or truncated after export")
    state, _ = read_safetensors(path / WEIGHTS, "model weights")
    module, datamodule = build_run(config, f"{path / CONFIG}: its config does not build a model")
    try:
        module.model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise DiffMVAEError(f"{path / WEIGHTS} does not match the model of {CONFIG} ({first[:200]})") from e
    module.eval()
    return LoadedRun(module, datamodule, {"model": config["model"], "data": config["data"]}, {"global_step": config.get("trained", {}).get("global_step", 0)})
