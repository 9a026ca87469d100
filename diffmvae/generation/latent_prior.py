"""The auxiliary latent score prior for a trained run: draws of its aggregate posterior, and the
prior's own checkpoint file, kept beside the model's and never written into it.

A prior checkpoint is a plain dict read with ``weights_only=True``::

    {"format": "diffmvae-latent-prior", "version": 1, "prior": {"class_path": ..., "init_args": {...}},
     "state_dict": ..., "model": {"checkpoint": path, "sha256": ..., "latent_dim": d, "modalities": [...]},
     "fit": {settings, seed, losses, subsets, seconds}}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diffmvae.data.batches import map_batch
from diffmvae.devices import pick_device
from diffmvae.devices import precision as autocast
from diffmvae.io import DiffMVAEError, check_writable, refuse_existing
from diffmvae.model.posterior import product_of_experts, reparameterize
from diffmvae.model.vae import MultimodalVAE
from diffmvae.store.build import build
from diffmvae.store.load import load_run
from diffmvae.store.prior_file import default_prior_path, save_prior
from diffmvae.training.module import split_batch
from priors import ScorePrior
from priors.training import PriorFitConfig, fit_score_prior

log = logging.getLogger(__name__)

AggregateFamily = Literal["mixture", "joint"]


class AggregatePosterior:
    """Draws of the aggregate posterior ``q(z) = E_X q(z|X)`` of a trained model over a dataset.

    The frozen encoders run once; the unimodal experts ``[N, M, d]`` are kept, and each draw picks examples
    uniformly, a subset from the model's mixture weights (``family="mixture"``: ``q(z|X) = sum_A omega_A
    q(z|x_A)``, the MoPoE posterior) or the joint subset of all present modalities (``family="joint"``), and
    samples that subset's PoE.
    """

    def __init__(self, mu: Tensor, logvar: Tensor, present: Tensor, subset_mask: Tensor, family: AggregateFamily = "mixture") -> None:
        if family not in ("mixture", "joint"):
            raise DiffMVAEError(f"unknown aggregate-posterior family {family!r}; choose mixture or joint")
        self.mu, self.logvar, self.present, self.family = mu, logvar, present, family
        self.subset_mask = subset_mask.cpu()

    @classmethod
    @torch.no_grad()
    def from_model(
        cls, model: MultimodalVAE, dataset: Dataset, *, family: AggregateFamily = "mixture", batch_size: int = 256, progress: bool = True
    ) -> AggregatePosterior:
        """Encode every example of ``dataset`` with ``model``'s (frozen) encoders."""
        model.eval()
        device = model.device_of()
        mus, logvars, presents = [], [], []
        for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="encoding", disable=not progress, leave=False):
            x, present = split_batch(batch, model.modalities)
            mu, logvar, present = model.experts({m: map_batch(v, lambda t: t.to(device)) for m, v in x.items()}, present)
            mus.append(mu.transpose(0, 1).cpu())
            logvars.append(logvar.transpose(0, 1).cpu())
            presents.append(present.cpu())
        return cls(torch.cat(mus), torch.cat(logvars), torch.cat(presents), model.subset_mask, family)

    def __len__(self) -> int:
        return self.mu.shape[0]

    def __call__(self, n: int, generator: torch.Generator) -> Tensor:
        """``[n, d]`` draws."""
        idx = torch.randint(len(self), (n,), generator=generator)
        present = self.present[idx]  # [n, M]
        if self.family == "joint":
            mask = present
        else:
            valid = (self.subset_mask[:, None, :] & present[None]).any(-1).T.float()  # [n, S]
            subset = torch.multinomial(valid, 1, generator=generator)[:, 0]
            mask = self.subset_mask[subset] & present
        mu_a, logvar_a = product_of_experts(self.mu[idx].transpose(0, 1), self.logvar[idx].transpose(0, 1), mask[None])
        return reparameterize(mu_a[0], logvar_a[0], generator)


def fit_prior_for_checkpoint(
    model_ckpt: str | Path,
    *,
    prior_args: Mapping[str, Any],
    fit_args: Mapping[str, Any],
    out: str | Path | None = None,
    overwrite: bool = False,
    family: AggregateFamily = "mixture",
    split: str = "train",
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
    precision: str = "32-true",
) -> Path:
    """Fit a :class:`~priors.ScorePrior` to the aggregate posterior of the run in ``model_ckpt`` and write its
    checkpoint to ``out`` (default :func:`default_prior_path`). The model checkpoint is only read."""

    model_ckpt = Path(model_ckpt)
    out = Path(out) if out is not None else default_prior_path(model_ckpt)
    if out.resolve() == model_ckpt.resolve():
        raise DiffMVAEError(f"--out {out} is the model checkpoint itself; a prior is written beside it, never into it")
    refuse_existing(out, overwrite)
    check_writable(out.parent, "the prior's folder")
    config = PriorFitConfig(**fit_args)
    run = load_run(model_ckpt)
    model = run.module.model
    spec = {"class_path": f"{ScorePrior.__module__.split('.')[0]}.{ScorePrior.__name__}", "init_args": {**prior_args, "latent_dim": model.latent_dim}}
    prior = build({"prior": spec}, {"prior": ScorePrior}, "the score prior's settings")["prior"]

    device = torch.device(device) if device is not None else pick_device()
    model.to(device)
    start = time.perf_counter()
    draw = AggregatePosterior.from_model(model, run.datamodule.dataset(split), family=family, progress=progress)
    log.info("encoded %d %s examples; fitting a %.2fM-parameter score prior for %d steps", len(draw), split,
             sum(p.numel() for p in prior.parameters()) / 1e6, config.steps)
    prior.to(device)
    with autocast(precision, device):
        losses = fit_score_prior(prior, draw, config, seed=seed, progress=progress)
    fit = {"settings": vars(config), "seed": seed, "family": family, "split": split, "examples": len(draw),
           "losses": losses, "seconds": time.perf_counter() - start}
    return save_prior(out, prior.cpu(), spec, model_ckpt, model, fit)
