"""``diffmvae prior fit``: fit the latent score prior of a trained run."""

from __future__ import annotations

import logging
import time
from typing import Literal, Optional

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from diffmvae.commands.common import _parse_config, fit_arguments, seed_torch
from diffmvae.devices import add_device_arguments, pick_device
from diffmvae.generation.latent_prior import AggregateFamily, fit_prior_for_checkpoint
from priors import ScorePrior
from priors.training import PriorFitConfig

log = logging.getLogger("diffmvae")


def _prior(argv: list[str]) -> int:
    args = fit_arguments(argv, "prior", "--ckpt CKPT [--config YAML] [--out PATH]")

    p = ArgumentParser(prog="diffmvae prior fit", exit_on_error=False,
                       description="Fit the auxiliary latent score prior to a trained checkpoint's aggregate posterior.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML with prior / fit / family keys")
    p.add_argument("--ckpt", type=str, required=True, help="model checkpoint written by `diffmvae fit` (only read)")
    p.add_argument("--out", type=Optional[str], default=None, help="prior checkpoint (default: CKPT's name with .prior.ckpt)")
    p.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace an existing output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", type=AggregateFamily, default="mixture", help="aggregate posterior: mixture (MoPoE q(z|X)) or joint")
    p.add_argument("--split", type=Literal["train", "val", "test"], default="train")
    p.add_class_arguments(ScorePrior, "prior", skip={"latent_dim"}, instantiate=False)
    p.add_class_arguments(PriorFitConfig, "fit", instantiate=False)
    add_device_arguments(p)
    cfg = _parse_config(p, args)
    device = pick_device(cfg.accelerator, cfg.devices)
    seed_torch(cfg.seed)
    start = time.perf_counter()
    path = fit_prior_for_checkpoint(
        cfg.ckpt, prior_args=cfg.prior.as_dict(), fit_args=cfg.fit.as_dict(), out=cfg.out, overwrite=cfg.overwrite,
        family=cfg.family, split=cfg.split, seed=cfg.seed, device=device, precision=cfg.precision,
    )
    log.info("wrote %s in %.0fs", path, time.perf_counter() - start)
    return 0
