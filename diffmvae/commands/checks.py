"""Checks the ``fit`` command runs before any work: config files that parse, logger folders that belong to no
other run, and a model whose modalities the data has. Each failure is one line naming the file, folder or modality."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from diffmvae.data.datamodule import MultimodalDataModule
from diffmvae.io import DiffMVAEError, atomic_write, check_writable, one_line

CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"


def derive_run_dirs(trainer: Any) -> Path:
    """Every folder of a run from one setting, ``trainer.default_root_dir`` (default: the working directory, as in
    Lightning): a config that names no logger gets a CSV logger writing ``ROOT/metrics.csv``, and a checkpoint
    callback without a ``dirpath`` writes ``ROOT/checkpoints``. Folders a config names itself are kept. Edits the
    parsed trainer config in place and returns the root."""

    root = Path(trainer.default_root_dir or ".")
    trainer.default_root_dir = str(root)
    if trainer.get("logger") is None or trainer.logger is True:
        trainer.logger = Namespace(class_path=CSV_LOGGER, init_args=Namespace(save_dir=str(root), name="", version=""))
    for cb in trainer.get("callbacks") or []:
        if isinstance(cb, Namespace) and str(cb.get("class_path", "")).endswith("ModelCheckpoint") and cb.init_args.get("dirpath") is None:
            cb.init_args.dirpath = str(root / "checkpoints")
    return root


def fixed_logger_dirs(loggers: Any) -> list[Path]:
    """The folders of the loggers that have a fixed ``version`` (the ones a rerun writes into again)."""
    folders = []
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args = getattr(logger, "init_args", None) or (logger.get("init_args") if isinstance(logger, dict) else None)
        if not args or args.get("version") is None or args.get("save_dir") is None:
            continue
        version = args["version"]
        folders.append(Path(args["save_dir"]) / (args.get("name") or "") / (version if isinstance(version, str) else f"version_{version}"))
    return folders


def keep_metrics_for_resume(loggers: Any) -> tuple[Path, Path] | None:
    """Lightning's CSV logger deletes the ``metrics.csv`` it finds when it starts, which would lose a resumed run's
    history: move it aside to ``metrics.before_resume.csv`` (it stays there if the resumed run fails)."""
    for folder in fixed_logger_dirs(loggers):
        if (folder / "metrics.csv").exists():
            kept = folder / "metrics.before_resume.csv"
            if not kept.exists():  # a second failed resume keeps the first history
                (folder / "metrics.csv").replace(kept)
            else:
                (folder / "metrics.csv").unlink()
            return folder / "metrics.csv", kept
    return None


def merge_resumed_metrics(metrics: Path, kept: Path, last_step: int | None) -> None:
    """``metrics.csv`` = the rows of the run before the resume, up to the resumed step, then the rows written since
    (all the rows before the resume when none was written since and ``last_step`` is None: a resume that failed)."""

    def rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
        if not path.exists():
            return [], []
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    old_keys, old_rows = rows(kept)
    new_keys, new_rows = rows(metrics)
    resumed_at = min((int(float(r["step"])) for r in new_rows if r.get("step")), default=math.inf if last_step is None else last_step + 1)
    merged = [r for r in old_rows if r.get("step") and int(float(r["step"])) < resumed_at] + new_rows
    keys = old_keys + [k for k in new_keys if k not in old_keys]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(merged)

    atomic_write(metrics, write)
    kept.unlink()


def check_logger_dirs(loggers: Any) -> None:
    """A logger with a fixed ``version`` writes into a fixed folder, and Lightning's CSV logger deletes the
    ``metrics.csv`` it finds there as soon as it starts: refuse a new run whose logger folder holds another run's
    metrics (before anything is instantiated)."""
    for folder in fixed_logger_dirs(loggers):
        if (folder / "metrics.csv").exists():
            raise DiffMVAEError(f"{folder / 'metrics.csv'} already exists (the logger's folder belongs to another run); resume that run "
                                "with --ckpt_path or give this one another logger name or version (nothing was overwritten)")


def check_run_dirs(trainer: Any) -> None:
    """Before training: the run's folders (``default_root_dir``, the checkpoint folder, each logger's folder) can be
    written, so a read-only or mistyped path is one line now rather than a traceback at the first checkpoint."""

    folders = {"--trainer.default_root_dir": trainer.default_root_dir}
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
        folders["the checkpoint folder"] = trainer.checkpoint_callback.dirpath
    for logger in trainer.loggers:
        if getattr(logger, "save_dir", None):
            folders[f"the {type(logger).__name__}'s folder"] = logger.save_dir
    for what, folder in folders.items():
        if "://" not in str(folder):
            check_writable(folder, what)


def check_config_files(argv: Sequence[str]) -> None:
    """Every ``--config FILE`` exists and is valid YAML (one line naming the file, before LightningCLI parses it)."""

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
    if isinstance(datamodule, MultimodalDataModule):
        n = len(datamodule.dataset("train"))
        if n < datamodule.batch_size:  # training batches drop the last partial one: nothing would be trained
            raise DiffMVAEError(f"the training split has {n} examples, fewer than one batch (--data.init_args.batch_size "
                                f"{datamodule.batch_size}); nothing would be trained")


def check_fresh_root(root: Path) -> None:
    """A new run (no ``--ckpt_path``) refuses a root that already holds a run's last checkpoint, saying how to
    resume it or where else to start."""
    last = root / "checkpoints" / "last.ckpt"
    if last.exists():
        raise DiffMVAEError(f"{root} already holds a run; resume it with --ckpt_path {last}, or start another with "
                            "--trainer.default_root_dir DIR (nothing was overwritten)")


def check_data_folders(data: Any) -> None:
    """A data module's ``root`` (and any other ``*_root`` folder it names) exists, before Lightning or
    any model is built: one line naming the key and the folder."""
    args = data.get("init_args") if isinstance(data, Namespace) else None
    if not isinstance(args, Namespace):
        return
    for key, value in args.items():
        if (key == "root" or key.endswith("_root")) and isinstance(value, (str, Path)) and value and "://" not in str(value):
            check_data_root(value, f"--data.init_args.{key}")


def check_data_root(folder: str | Path, flag: str) -> None:
    """One line naming ``flag`` when the data folder ``folder`` does not exist."""
    if not Path(folder).is_dir():
        raise DiffMVAEError(f"{flag} {folder} is not a folder (the data set's files are read from there; diffmvae never downloads)")
