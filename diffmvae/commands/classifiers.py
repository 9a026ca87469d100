"""``diffmvae classifiers fit``: train the judge classifiers of ``diffmvae evaluate``."""

from __future__ import annotations

import logging
import time
from typing import Optional

import lightning as L
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from diffmvae.commands.common import _parse_config, fit_arguments, seed_torch
from diffmvae.devices import add_device_arguments, pick_device, precision
from diffmvae.evaluation.runs import fit_classifiers
from diffmvae.store.build import user_class_paths

log = logging.getLogger("diffmvae")


def _classifiers(argv: list[str]) -> int:
    args = fit_arguments(argv, "classifiers", "--config YAML [--out PATH]")

    p = ArgumentParser(prog="diffmvae classifiers fit", exit_on_error=False,
                       description="Train the per-modality judge classifiers of `diffmvae evaluate` on real data.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML with data / epochs / ... keys")
    p.add_subclass_arguments(L.LightningDataModule, "data", instantiate=False, help="the real data, as in a fit config")
    p.add_argument("--out", type=Optional[str], default=None, help="classifier file (default: runs/classifiers/<data key>.pt)")
    p.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace an existing output")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    add_device_arguments(p)
    cfg = _parse_config(p, args)
    device = pick_device(cfg.accelerator, cfg.devices)
    seed_torch(cfg.seed)
    start = time.perf_counter()
    with precision(cfg.precision, device):
        data = cfg.data.as_dict()  # a data module of the user's is trusted: they named it here
        path = fit_classifiers(data, cfg.out, trusted=user_class_paths(data), overwrite=cfg.overwrite, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                               seed=cfg.seed, device=device)
    log.info("wrote %s in %.0fs", path, time.perf_counter() - start)
    return 0
