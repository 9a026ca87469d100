"""Checks the ``fit`` command runs before any work: config files that parse, logger folders that belong to no
other run, and a model whose modalities the data has. Each failure is one line naming the file, folder or modality."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffmvae.io import DiffMVAEError


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def check_logger_dirs(loggers: Any) -> None:
    """A logger with a fixed ``version`` writes into a fixed folder, and Lightning's CSV logger deletes the
    ``metrics.csv`` it finds there as soon as it starts: refuse a new run whose logger folder holds another run's
    metrics (before anything is instantiated)."""
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args = getattr(logger, "init_args", None) or (logger.get("init_args") if isinstance(logger, dict) else None)
        if not args or args.get("version") is None or args.get("save_dir") is None:
            continue
        version = args["version"]
        folder = Path(args["save_dir"]) / (args.get("name") or "") / (version if isinstance(version, str) else f"version_{version}")
        if (folder / "metrics.csv").exists():
            raise DiffMVAEError(f"{folder / 'metrics.csv'} already exists (the logger's folder belongs to another run); resume that run "
                                "with --ckpt_path or give this one another logger name or version (nothing was overwritten)")


def check_config_files(argv: Sequence[str]) -> None:
    """Every ``--config FILE`` exists and is valid YAML (one line naming the file, before LightningCLI parses it)."""
    import yaml

    for flag, value in zip(argv, argv[1:]):
        if flag == "--config" and not value.lstrip().startswith("{"):
            path = Path(value)
            if not path.is_file():
                raise DiffMVAEError(f"--config {path} does not exist")
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                raise DiffMVAEError(f"--config {path} is not valid YAML ({one_line(e)[:200]})") from e


def check_data(model: Any, datamodule: Any) -> None:
    """Every modality of the model must be one the data declares (one line naming it, before training)."""
    specs = getattr(datamodule, "specs", None)
    if specs is None:
        return
    missing = [m for m in model.modalities if m not in specs]
    if missing:
        raise DiffMVAEError(f"the model has modality {missing[0]!r}, which the data ({type(datamodule).__name__}) does not have; "
                            f"it has {', '.join(specs)}")
    for decoder in model.decoders.values():
        decoder.check_specs(specs)
