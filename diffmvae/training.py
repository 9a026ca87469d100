"""The LightningModule that trains any multimodal VAE of this library under the combined ELBO."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from functools import partial
from typing import Any, get_args

import lightning as L
import torch
from torch import Tensor
from torch_ema import ExponentialMovingAverage

from decoders import Decoder
from decoders.diffusion_decoder import share_backbones
from decoders.optim import LRSchedule, lr_factor
from diffmvae.io import image_grid, save_png
from diffmvae.model import MultimodalVAE
from diffmvae.subsets import SubsetFamily
from encoders import Encoder

log = logging.getLogger(__name__)


def split_batch(batch: Mapping[str, Any], modalities: tuple[str, ...]) -> tuple[dict[str, Tensor], Tensor | None]:
    """A collated batch to ``(x, present)``: the modality tensors and the optional ``[B, M]`` mask."""
    return {m: batch[m] for m in modalities if m in batch}, batch.get("present")


def staged_lr_factor(step: int, *, schedule: LRSchedule, warmup: int, total: int, stage: int = 0) -> float:
    """:func:`lr_factor` restarted at ``stage`` (the end of the feed-forward warm-up stage), so the diffusion
    stage gets its own warm-up and decay instead of the tail of the first stage's."""
    if 0 < stage < total:
        if step < stage:
            return lr_factor(step, schedule=schedule, warmup=warmup, total=stage)
        return lr_factor(step - stage, schedule=schedule, warmup=warmup, total=total - stage)
    return lr_factor(step, schedule=schedule, warmup=warmup, total=total)


class DiffMVAE(L.LightningModule):
    """Trains a :class:`MultimodalVAE` (feed-forward and/or diffusion decoders) with the mixture ELBO.

    Args:
        encoders, decoders: per-modality modules keyed by modality name.
        latent_dim: size of the shared latent ``z``.
        subsets: ``mopoe`` (default), ``poe`` (MVAE) or ``moe`` (MMVAE).
        beta: weight of the KL term.
        modality_weights: per-modality weight of the reconstruction term (``lambda_j`` of seed 003 eq. 17 for
            diffusion decoders); 1 where not given.
        lr, weight_decay: AdamW settings. Gradient clipping is the Trainer's ``gradient_clip_val``.
        ema_decay: decay of the weight EMA used for validation, sampling and the checkpoint's
            ``ema_state_dict``.
        lr_schedule, warmup_steps: ``constant`` or ``cosine`` decay to zero over the run's optimizer steps
            (``trainer.estimated_stepping_batches``), after a linear warm-up; with a feed-forward warm-up stage
            the schedule restarts when the diffusion stage begins.
        num_sample_rows: examples shown in the sample grid written each validation epoch.
        feedforward_warmup_steps: staged training in one run: for this many optimizer steps the diffusion
            decoders contribute only their feed-forward mean head's likelihood (the diffusion term is off);
            then everything trains under the full ELBO.
        freeze_encoders_after_warmup: from the end of that stage on, keep the encoders fixed.
        init_from: warm start from another ``diffmvae fit`` checkpoint (its EMA weights) at the start of a
            fresh fit: tensors with the same name and shape are copied, and a feed-forward decoder's weights
            go to the same modality's diffusion-decoder mean head (``decoders.m.*`` -> ``decoders.m.mean_head.*``).
        grid_steps: sampler steps of the diffusion decoders for the per-epoch sample grids (default: theirs).
        share_backbone: all diffusion decoders use one UNet (:func:`decoders.diffusion_decoder.share_backbones`).
    """

    def __init__(
        self,
        encoders: dict[str, Encoder],
        decoders: dict[str, Decoder],
        latent_dim: int = 32,
        subsets: SubsetFamily = "mopoe",
        beta: float = 1.0,
        modality_weights: dict[str, float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ema_decay: float = 0.999,
        lr_schedule: LRSchedule = "constant",
        warmup_steps: int = 0,
        num_sample_rows: int = 8,
        feedforward_warmup_steps: int = 0,
        freeze_encoders_after_warmup: bool = False,
        init_from: str | None = None,
        grid_steps: int | None = None,
        share_backbone: bool = False,
    ) -> None:
        super().__init__()
        if share_backbone:
            share_backbones(decoders)
        self.model = MultimodalVAE(encoders, decoders, latent_dim, subsets)
        unknown = set(modality_weights or {}) - set(self.model.modalities)
        if unknown:
            raise ValueError(f"modality_weights names unknown modality {sorted(unknown)[0]!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if lr_schedule not in get_args(LRSchedule):
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; expected one of {', '.join(get_args(LRSchedule))}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.lr_schedule, self.warmup_steps = lr_schedule, warmup_steps
        self.beta, self.modality_weights = beta, dict(modality_weights or {})
        self.lr, self.weight_decay, self.num_sample_rows = lr, weight_decay, num_sample_rows
        if feedforward_warmup_steps < 0:
            raise ValueError(f"feedforward_warmup_steps must be >= 0, got {feedforward_warmup_steps}")
        if init_from is not None and not Path(init_from).is_file():
            raise ValueError(f"init_from checkpoint {init_from} does not exist")
        if grid_steps is not None and grid_steps < 1:
            raise ValueError(f"grid_steps must be >= 1, got {grid_steps}")
        self.feedforward_warmup_steps, self.freeze_encoders_after_warmup = feedforward_warmup_steps, freeze_encoders_after_warmup
        self.init_from, self.grid_steps = init_from, grid_steps
        self.ema = ExponentialMovingAverage(list(self.model.parameters()), decay=ema_decay)
        self.run_config: dict[str, Any] | None = None  # set by the CLI; stored in checkpoints to rebuild the run
        self._sample_batch: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ training
    def _step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        x, present = split_batch(batch, self.model.modalities)
        record = self.model.elbo(x, present)
        loss = record.loss(self.beta, self.modality_weights).mean()
        batch_size = next(iter(x.values())).shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=stage != "train")
        for name, value in record.means().items():
            self.log(f"{stage}/{name}", value, batch_size=batch_size, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        warm = self.global_step < self.feedforward_warmup_steps
        for dec in self.model.decoders.values():
            if dec.is_diffusion:
                dec.diffusion_weight = 0.0 if warm else 1.0
        if not warm and self.freeze_encoders_after_warmup:
            frozen = [p for p in self.model.encoders.parameters() if p.requires_grad]
            if frozen:
                for p in frozen:
                    p.requires_grad_(False)
                log.info("step %d: feed-forward stage over; encoders frozen", self.global_step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update()

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "constant" and self.warmup_steps == 0:
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        factor = partial(staged_lr_factor, schedule=self.lr_schedule, warmup=self.warmup_steps, total=total,
                         stage=self.feedforward_warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ EMA
    def on_fit_start(self) -> None:
        if self.init_from is not None and self.global_step == 0:
            self.warm_start(self.init_from)
        self.ema.to(device=next(self.model.parameters()).device)  # torch-ema keeps its own copies

    def warm_start(self, path: str | Path) -> None:
        """Copy matching tensors from another run's EMA weights (see ``init_from``), then restart the EMA there."""
        from diffmvae.checkpoint import read_checkpoint

        ckpt = read_checkpoint(path)
        source = ckpt.get("ema_state_dict") or {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
        target = self.model.state_dict()
        copied = {}
        for name, value in source.items():
            parts = name.split(".")
            candidates = [name] + ([".".join([*parts[:2], "mean_head", *parts[2:]])] if parts[0] == "decoders" else [])
            for cand in candidates:
                if cand in target and target[cand].shape == value.shape:
                    copied[cand] = value
                    break
        self.model.load_state_dict(copied, strict=False)
        with torch.no_grad():
            for shadow, p in zip(self.ema.shadow_params, self.model.parameters()):
                shadow.copy_(p)
        log.info("warm start from %s: %d of %d tensors copied", path, len(copied), len(target))

    def on_validation_epoch_start(self) -> None:
        with torch.no_grad():
            self.ema.store()
            self.ema.copy_to()

    def on_validation_epoch_end(self) -> None:
        try:
            if self.trainer.is_global_zero and self._sample_batch is not None and not self.trainer.sanity_checking:
                self._write_sample_grid()
        finally:
            with torch.no_grad():
                self.ema.restore()

    def ema_state_dict(self) -> dict[str, Tensor]:
        """The model's state dict with every parameter replaced by its EMA value."""
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        shadows = {id(p): shadow for p, shadow in zip(self.model.parameters(), self.ema.shadow_params)}
        for name, p in self.model.named_parameters(remove_duplicate=False):  # a shared module appears under every name
            state[name] = shadows[id(p)].detach().clone().to(state[name].device)
        return state

    def load_ema_state_dict(self, state: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for (name, _), shadow in zip(self.model.named_parameters(), self.ema.shadow_params):
                shadow.copy_(state[name])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ema_state_dict"] = self.ema_state_dict()
        checkpoint["ema_num_updates"] = self.ema.num_updates
        checkpoint["diffmvae_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema_state_dict" in checkpoint:
            self.load_ema_state_dict(checkpoint["ema_state_dict"])
            self.ema.num_updates = checkpoint.get("ema_num_updates")
        self.run_config = checkpoint.get("diffmvae_config")

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        if batch_idx == 0 and self._sample_batch is None:
            x, _ = split_batch(batch, self.model.modalities)
            self._sample_batch = {m: v[: self.num_sample_rows] for m, v in x.items()}
        return self._step(batch, "val")

    def _write_sample_grid(self) -> None:
        """``samples/epoch_XXX.png``: left, conditional generation from the first modality (its column is the
        input); right, unconditional samples from the prior. Image modalities only."""
        assert self._sample_batch is not None
        generator = torch.Generator(device=self.device).manual_seed(0)
        first = self.model.modalities[0]
        given = {first: self._sample_batch[first]}
        n = given[first].shape[0]
        if self.grid_steps is not None:
            self.model.configure_sampling(steps=self.grid_steps)
        with torch.no_grad():
            cond = self.model.generate(given, generator=generator)
            uncond = self.model.generate(None, n, generator=generator)
        images = [m for m in self.model.modalities if cond[m].dim() == 4]
        blank = torch.ones_like(cond[images[0]][:, :1]).expand(-1, 3, -1, -1) if images else None
        columns = [cond[m] for m in images] + ([blank] if images else []) + [uncond[m] for m in images]
        if not columns:
            return
        root = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        path = save_png(image_grid(columns), root / "samples" / f"epoch_{self.current_epoch:03d}.png")
        log.info("wrote %s", path)
