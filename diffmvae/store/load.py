"""Load a trained run: a ``diffmvae fit`` checkpoint or a model folder, rebuilt from its stored config through
:mod:`diffmvae.store.build` (the parser ``fit`` used), weights read without unpickling code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from diffmvae.io import DiffMVAEError, file_sha256, read_safetensors
from diffmvae.store.build import TRUSTED_KEY, build_run
from diffmvae.training import TrainingModule
from diffmvae.training.checkpoint_io import read_checkpoint

# A model folder's format name and its files (written by :mod:`diffmvae.store.folder`).
FOLDER_FORMAT = "diffmvae-model-folder"
FOLDER_VERSION = 1
WEIGHTS, CONFIG, PRIOR, CARD = "model.safetensors", "config.yaml", "prior.safetensors", "README.md"
RELATIVE_KEY = "paths_in_folder"  # the config keys (a.b.c) whose values are paths relative to the folder


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
    if isinstance(run.module, TrainingModule):
        run.module.apply_memory_format()  # the memory order it trained in (channels_last)
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


def resolve_in_folder(config: dict[str, Any], key: str, folder: Path) -> None:
    """Make the value at ``key`` (``a.b.c``) of ``config``, a path relative to the model folder, absolute; one line
    when the key is missing or the path leaves the folder."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or not isinstance(node.get(last), str):
        raise DiffMVAEError(f"{folder / CONFIG}: {RELATIVE_KEY} names {key}, which holds no path")
    target = (folder / node[last]).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise DiffMVAEError(f"{folder / CONFIG}: {key} ({node[last]}) is outside the model folder")
    node[last] = str(target)


def load_folder(path: str | Path) -> LoadedRun:
    """Rebuild a model folder written by ``diffmvae export``: ``config.yaml`` (safe YAML, library classes only) and
    ``model.safetensors`` (checked against the sha256 the config records). No pickle is read."""

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
    for key in config.get(RELATIVE_KEY) or []:
        resolve_in_folder(config, str(key), path)
    state, _ = read_safetensors(path / WEIGHTS, "model weights")
    module, datamodule = build_run(config, f"{path / CONFIG}: its config does not build a model")
    try:
        module.model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise DiffMVAEError(f"{path / WEIGHTS} does not match the model of {CONFIG} ({first[:200]})") from e
    module.eval()
    kept = {key: config[key] for key in ("model", "data", TRUSTED_KEY) if key in config}
    return LoadedRun(module, datamodule, kept, {"global_step": config.get("trained", {}).get("global_step", 0)})
