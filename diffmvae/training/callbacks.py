"""Training callbacks: the weight EMA, a feed-forward warm-up stage, warm starts from another run, sample grids.

Each is listed under ``trainer.callbacks`` in a config; the LightningModule knows none of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torch.utils.data import default_collate
from torch_ema import ExponentialMovingAverage

from decoders import DiffusionDecoder, SamplingSettings
from diffmvae.io import DiffMVAEError, image_grid, save_png
from diffmvae.training.checkpoint_io import read_checkpoint

log = logging.getLogger(__name__)


def named_parameters(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Every parameter under every name (a module shared by two decoders appears under both)."""
    return list(module.named_parameters(remove_duplicate=False))


class EMA(L.Callback):
    """An exponential moving average of the model's weights (torch-ema): updated after every optimizer step, swapped in
    for validation (and the sample grids), and saved in the checkpoint as ``ema_state_dict`` (the model's state dict
    with the averaged parameters), which sampling and evaluation load. Resumes with its average and update count."""

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.ema: ExponentialMovingAverage | None = None
        self._restored: dict[str, Any] | None = None
        self._swapped = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = [p for _, p in named_parameters(pl_module.model)]
        self.ema = ExponentialMovingAverage(params, decay=self.decay)
        self.ema.to(device=pl_module.device)  # torch-ema keeps its own copies: move them with the module
        if self._restored is not None:
            with torch.no_grad():
                for (name, _), shadow in zip(named_parameters(pl_module.model), self.ema.shadow_params):
                    shadow.copy_(self._restored["state"][name])
            self.ema.num_updates = self._restored["num_updates"]
            self._restored = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        assert self.ema is not None
        self.ema.update()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.swap_in()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.swap_out()

    def swap_in(self) -> None:
        if self.ema is not None and not self._swapped:
            with torch.no_grad():
                self.ema.store()
                self.ema.copy_to()
            self._swapped = True

    def swap_out(self) -> None:
        if self._swapped:
            with torch.no_grad():
                self.ema.restore()
            self._swapped = False

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """The averaged weights in the model for the block (the raw ones back after it); nothing to swap before the
        fit starts, or when they are in already."""
        if self.ema is None or self._swapped:
            yield
            return
        self.swap_in()
        try:
            yield
        finally:
            self.swap_out()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.ema is None:
            return
        if self._swapped:
            raise RuntimeError("EMA: a checkpoint was saved while the averaged weights were swapped in")
        state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        for (name, _), shadow in zip(named_parameters(pl_module.model), self.ema.shadow_params):
            state[name] = shadow.detach().clone().to(state[name].device)
        checkpoint["ema_state_dict"] = state
        checkpoint["ema_num_updates"] = self.ema.num_updates

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if "ema_state_dict" in checkpoint:
            self._restored = {"state": checkpoint["ema_state_dict"], "num_updates": checkpoint.get("ema_num_updates")}


class FeedForwardWarmup(L.Callback):
    """Staged training in one run: for ``steps`` optimizer steps the diffusion terms are left out of the objective (the
    diffusion decoders train only their feed-forward mean heads, and the UNets are not run); then the full ELBO trains.

    Args:
        steps: length of the warm-up stage.
        freeze: sub-modules of the model (``encoders``, ``decoders.m0``, ...) kept fixed from the end of the stage on.
            They are frozen by dropping their gradients before each optimizer step, which leaves the backward pass and
            its gradient synchronisation untouched (safe under DDP) and keeps them out of gradient clipping.
        restart_lr: restart the learning-rate schedule where the stage ends.
    """

    def __init__(self, steps: int, freeze: Sequence[str] = (), restart_lr: bool = True) -> None:
        if steps < 0:
            raise ValueError(f"FeedForwardWarmup steps must be >= 0, got {steps}")
        self.steps, self.freeze, self.restart_lr = steps, tuple(freeze), restart_lr

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        names = dict(pl_module.model.named_modules())
        for name in self.freeze:
            if name not in names:
                raise DiffMVAEError(f"FeedForwardWarmup freeze names {name!r}, which is not a module of the model")
        if self.steps > 0:
            untrained = [key for key, dec in pl_module.model.decoders.items() if isinstance(dec, DiffusionDecoder) and not dec.mean_head_loss]
            if untrained:
                raise DiffMVAEError(f"FeedForwardWarmup trains the mean heads by their own likelihood, and decoder {untrained[0]!r} has "
                                    "mean_head_loss false (its warm-up would train nothing): set mean_head_loss true for staged training")
        if self.restart_lr and self.steps > 0:
            pl_module.add_lr_restart(self.steps)

    def warm(self, trainer: L.Trainer) -> bool:
        return trainer.global_step < self.steps

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        skip = frozenset({"diffusion"}) if self.warm(trainer) else frozenset()
        if skip != pl_module.skip_terms:
            log.info("step %d: %s", trainer.global_step, "feed-forward warm-up" if skip else "warm-up over; every term trains"
                     + (f", {', '.join(self.freeze)} fixed" if self.freeze else ""))
        pl_module.skip_terms = skip

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if self.freeze and not self.warm(trainer):
            modules = dict(pl_module.model.named_modules())
            for name in self.freeze:
                for p in modules[name].parameters():
                    p.grad = None  # AdamW skips parameters without a gradient: no update, no weight decay


# Target parameter name pattern -> source name: a feed-forward decoder's weights go to the mean head of the same modality.
MEAN_HEAD_RULE = {r"^decoders\.[^.]+\.mean_heads\.([^.]+)\.(.+)$": r"decoders.\1.\2"}


class WarmStart(L.Callback):
    """Start a fresh fit from another run's (EMA) weights: every parameter or buffer with the same name and shape is
    copied; for the others, ``rename`` maps a target name pattern to a source name (by default a feed-forward
    decoder's weights go to the same modality's diffusion-decoder mean head). Applied in ``setup``, before the EMA
    starts; a resumed fit (``--ckpt_path``) then restores its own weights over it.
    """

    def __init__(self, ckpt: str, rename: Mapping[str, str] | None = None) -> None:
        if not Path(ckpt).is_file():
            raise ValueError(f"warm-start checkpoint {ckpt} does not exist")
        self.ckpt = ckpt
        self.rename = dict(MEAN_HEAD_RULE if rename is None else rename)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            warm_start(pl_module.model, self.ckpt, self.rename)


def warm_start(model: torch.nn.Module, path: str | Path, rename: Mapping[str, str] = MEAN_HEAD_RULE) -> int:
    """Copy tensors from the run at ``path`` into ``model`` (see :class:`WarmStart`); returns how many were copied."""

    ckpt = read_checkpoint(path)
    source = ckpt.get("ema_state_dict") or {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    target = model.state_dict()
    copied: dict[str, Tensor] = {}
    for name, value in target.items():
        candidates = [name] + [re.sub(pattern, repl, name) for pattern, repl in rename.items() if re.match(pattern, name)]
        for cand in candidates:
            if cand in source and source[cand].shape == value.shape:
                copied[name] = source[cand]
                break
    model.load_state_dict(copied, strict=False)
    log.info("warm start from %s: %d of %d tensors copied", path, len(copied), len(target))
    return len(copied)


class SampleGrid(L.Callback):
    """Writes ``samples/epoch_XXX.png`` after validation epochs, and once more when training stops unless the last grid
    shows the last step, so a run without validation epochs still ends with one (rank 0, EMA weights when the
    :class:`EMA` callback is on): left, generation from ``given`` (default: the first modality) for the first ``rows``
    validation examples, whose observed column is the input; right, unconditional samples from the prior (for models that can
    generate with nothing given). Image modalities only (from the data's specs).

    Args:
        rows: examples shown.
        every_n_epochs: write every this many validation epochs.
        sampling: how diffusion decoders sample for the grid (e.g. fewer steps than the run's default).
        given: the modality to condition on.
    """

    def __init__(self, rows: int = 8, every_n_epochs: int = 1, sampling: SamplingSettings | None = None, given: str | None = None) -> None:
        if rows < 1 or every_n_epochs < 1:
            raise ValueError(f"SampleGrid needs rows >= 1 and every_n_epochs >= 1, got {rows}, {every_n_epochs}")
        self.rows, self.every_n_epochs, self.given = rows, every_n_epochs, given
        if sampling is not None and not isinstance(sampling, SamplingSettings):
            raise TypeError(f"sampling must be a decoders.SamplingSettings, got {type(sampling).__name__}")
        self.sampling = sampling
        self._written_step: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.given is not None and self.given not in pl_module.model.modalities:
            raise DiffMVAEError(f"SampleGrid given {self.given!r} is not a modality of the model ({', '.join(pl_module.model.modalities)})")
        if self.sampling is not None:
            pl_module.model.check_sampling(self.sampling)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        self.write(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._written_step == trainer.global_step:
            return
        ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
        training = pl_module.training
        pl_module.eval()
        try:
            with ema.averaged() if ema is not None else contextlib.nullcontext():
                self.write(trainer, pl_module)
        finally:
            pl_module.train(training)

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._written_step = trainer.global_step
        log_dir = trainer.log_dir  # a collective under DDP (rank 0 broadcasts it): every rank asks, before the rank check
        if not trainer.is_global_zero:
            return
        specs = getattr(trainer.datamodule, "specs", None)
        if not specs:
            return
        images = [m for m in pl_module.model.modalities if specs[m].is_image]
        if not images:
            return
        path = Path(log_dir or trainer.default_root_dir) / "samples" / f"epoch_{trainer.current_epoch:03d}.png"
        grid = self.grid(pl_module, trainer.datamodule, images)
        save_png(grid, path)
        log_image(trainer.loggers, "samples", grid, trainer.global_step)
        log.info("wrote %s", path)

    @torch.no_grad()
    def grid(self, pl_module: L.LightningModule, datamodule: Any, images: Sequence[str]) -> Tensor:
        model = pl_module.model
        given = self.given or next((m for m in model.modalities if model.can_generate((m,))), model.modalities[0])
        data = datamodule.dataset("val")
        batch = default_collate([data[i] for i in range(min(self.rows, len(data)))])
        x = {given: batch[given].to(pl_module.device)}
        sampling = self.sampling or pl_module.sampling
        generator = torch.Generator(device=pl_module.device).manual_seed(0)
        cond = model.generate(x, sampling=sampling, generator=generator)
        columns = [cond[m] for m in images]
        if model.can_generate(()):  # a model that needs a given modality (a conditional DDPM) has no unconditional half
            uncond = model.generate(None, batch[given].shape[0], sampling=sampling, generator=generator)
            columns += [torch.ones_like(cond[images[0]][:, :1]).expand(-1, 3, -1, -1)] + [uncond[m] for m in images]
        return image_grid(columns)


def log_image(loggers: Sequence[Any], key: str, image: Tensor, step: int) -> None:
    """Send ``image`` (``[3, H, W]`` in [0, 1]) to every logger that takes images: TensorBoard, MLflow, W&B. The CSV
    logger takes none (the PNG beside its metrics is the record)."""

    pixels = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, pixels.numpy(), step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, pixels.permute(1, 2, 0).numpy(), key=key, step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[pixels.permute(1, 2, 0).numpy()], step=step)


class SaveOnInterrupt(L.Callback):
    """Writes ``last.ckpt`` (in the ModelCheckpoint's folder) when a run is stopped by SIGTERM (what a cluster scheduler
    sends; Lightning stops after the current batch) or Ctrl-C, so ``--ckpt_path`` resumes it from that step. The first
    Ctrl-C is handled like SIGTERM (a clean stop after the current batch; a second one interrupts at once). Nothing is
    written for other exceptions (a non-finite loss keeps the last good checkpoint as it is)."""

    def __init__(self) -> None:
        self._previous_sigint: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def first_ctrl_c(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            log.info("Ctrl-C: stopping after the current batch and writing last.ckpt (press it again to stop at once)")
            os.kill(os.getpid(), signal.SIGTERM)

        self._previous_sigint = signal.signal(signal.SIGINT, first_ctrl_c)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        ckpt = trainer.checkpoint_callback
        folder = Path(ckpt.dirpath) if ckpt is not None and ckpt.dirpath else Path(trainer.default_root_dir) / "checkpoints"
        path = folder / "last.ckpt"
        if ckpt is not None:
            ckpt.last_model_path = str(path)  # recorded in the checkpoint: the resumed run writes last.ckpt again, not last-v1.ckpt
        trainer.save_checkpoint(path)  # every rank joins; rank 0 writes
        if trainer.is_global_zero:
            log.info("stopped by %s at step %d; wrote %s (resume with --ckpt_path %s)", type(exception).__name__, trainer.global_step, path, path)
