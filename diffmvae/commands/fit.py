"""``diffmvae fit`` / ``validate``: training through LightningCLI, with the library's checks before anything is written."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

from diffmvae.commands.checks import (
    check_config_files,
    check_data,
    check_data_folders,
    check_fresh_root,
    check_logger_dirs,
    check_run_dirs,
    derive_run_dirs,
    keep_metrics_for_resume,
    merge_resumed_metrics,
)
from diffmvae.commands.common import _config_error
from diffmvae.io import DiffMVAEError, one_line
from diffmvae.store.build import TRUSTED_KEY, user_class_paths
from diffmvae.training.checkpoint_io import read_training_checkpoint


def _lightning(argv: list[str]) -> int:
    kept_metrics: list = []  # a resumed run's metrics.csv, set aside while Lightning's logger starts a new one

    class DiffMVAECLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            if self.subcommand != "fit":
                check_data_folders(self.config[self.subcommand].get("data"))
                trainer = self.config[self.subcommand].trainer
                if trainer.get("logger") is None:  # validating writes no log into the run it reads
                    trainer.logger = False
                return
            check_data_folders(self.config[self.subcommand].get("data"))
            root = derive_run_dirs(self.config[self.subcommand].trainer)
            loggers = self.config[self.subcommand].trainer.get("logger")
            if self.config[self.subcommand].get("ckpt_path") is None:
                check_fresh_root(root)
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
                raise DiffMVAEError(f"{last} already exists; resume with --ckpt_path {last} or start another run with "
                                    "--trainer.default_root_dir DIR (nothing was overwritten)")
            check_run_dirs(self.trainer)
            check_data(self.model.model, self.datamodule)
            model, data = cfg.model.as_dict(), cfg.data.as_dict()
            self.model.run_config = {
                "model": model,
                "data": data,
                "seed_everything": cfg.get("seed_everything"),
                TRUSTED_KEY: user_class_paths({"model": model, "data": data}),
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
        raise DiffMVAEError(f"{one_line(e)} (a logger needs its extra: pip install -e '.[tensorboard]' or '.[mlflow]' from the repository)") from e
    finally:
        if kept_metrics and kept_metrics[0]:  # the resume failed: its history goes back into metrics.csv
            merge_resumed_metrics(*kept_metrics.pop(), None)
    return 0
