"""The LightningModule that trains any :class:`~diffmvae.model.MultimodalModel` under its ELBO.

The model is passed in (LightningCLI builds it from YAML); the module weights and reduces the model's named terms,
logs every one of them, owns the optimiser, the learning-rate schedule and the generator of training noise.
Staging, the weight EMA, warm starts and sample grids are callbacks (:mod:`diffmvae.callbacks`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import Tensor, nn

from decoders import SamplingSettings
from decoders.optim import LRSchedule, lr_factor
from decoders.threads import parts_on
from decoders.unet import UNet2d
from diffmvae.io import DiffMVAEError
from diffmvae.model.base import MultimodalModel, batch_size
from diffmvae.training.checkpoint_io import install_atomic_checkpoints
from diffmvae.training.threads import threaded_step
from encoders import ConvImageEncoder, MLPEncoder

log = logging.getLogger(__name__)


def split_batch(batch: Mapping[str, Any], modalities: Sequence[str]) -> tuple[dict[str, Any], Tensor | None]:
    """A collated batch to ``(x, present)``: the modality entries and the optional ``[B, M]`` mask."""
    return {m: batch[m] for m in modalities if m in batch}, batch.get("present")


def to_channels_last(x: Mapping[str, Any]) -> dict[str, Any]:
    """The modality entries with every 4-D tensor (an image batch) in channels-last (NHWC) memory order."""
    return {m: v.contiguous(memory_format=torch.channels_last) if isinstance(v, Tensor) and v.dim() == 4 else v for m, v in x.items()}


Reduction = Literal["sum", "mean"]


def dimensions(value: Any) -> int:
    """The number of dimensions of one example of a modality's batch: pixels times channels of an image, the entries
    of a vector, 1 for a label, the tokens of a text modality (``input_ids``' length)."""
    tensor = value["input_ids"] if isinstance(value, Mapping) else value
    return math.prod(tensor.shape[1:])


def staged_lr_factor(step: int, *, schedule: LRSchedule, warmup: int, total: int, restarts: Sequence[int] = ()) -> float:
    """:func:`lr_factor` restarted at every step in ``restarts`` (e.g. where a feed-forward warm-up stage ends): each
    segment gets its own warm-up and decay instead of the tail of the previous one's."""
    bounds = [0, *sorted(r for r in set(restarts) if 0 < r < total), total]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if step < stop or stop == total:
            return lr_factor(step - start, schedule=schedule, warmup=warmup, total=stop - start)
    raise AssertionError("unreachable")  # pragma: no cover


class TrainingModule(L.LightningModule):
    """Trains a multimodal model (a :class:`~diffmvae.MultimodalVAE` with feed-forward and/or diffusion decoders,
    or any :class:`~diffmvae.model.MultimodalModel`) on its named ELBO terms.

    Args:
        model: the model, built from its own config.
        beta: weight of the KL term.
        modality_weights: per-modality weight of every term of that modality (``lambda_j`` of Wesego & Rooshenas 2024 eq. 17 for
            diffusion decoders); 1 where not given.
        term_weights: weight per term kind (``mean_nll``, ``diffusion``, ...) or per term name (``m0/mean_nll``), over
            the defaults the decoders declare (``Decoder.term_weights``).
        lr: AdamW's learning rate. Gradient clipping is the Trainer's ``gradient_clip_val``.
        weight_decay: AdamW's weight decay.
        lr_schedule: ``constant`` or ``cosine`` decay to zero over the run's optimizer steps
            (``trainer.estimated_stepping_batches``), after a linear warm-up.
        warmup_steps: optimizer steps of the linear warm-up.
        lr_restarts: steps where the schedule starts again (a staging callback adds the end of its warm-up).
        sampling: the run's default :class:`~decoders.SamplingSettings` (for ``diffmvae sample`` / ``evaluate`` when
            they are given none, and the sample grids); exact sampling by default.
        seed: seed of the training-noise generator (default: ``seed_everything``'s, else 0); each process adds its rank.
        likelihood_reduction: how each modality's terms enter the objective: ``sum`` over its dimensions (a
            log-likelihood, the ELBO as written; the default) or ``mean``, divided by its number of dimensions (pixels
            times channels, entries, caption tokens; :func:`dimensions`), as Wesego & Rooshenas (2024, §6.3-6.4) train
            MoPoE next to Diff-MVAE with a small ``beta``. The KL is not divided.
        channels_last: keep every 4-D weight and image batch in channels-last (NHWC) memory order, for training and
            for sampling from the run's checkpoints. The same computation in another order (equal within float
            tolerance); convolutions run faster in it on CPUs (oneDNN) and on GPUs with tensor cores:
            ``experiments/benchmarks/step_speed.py`` measures it side by side.
        compile_backend: ``torch.compile`` the networks a step spends its time in, the image and vector encoders and
            the diffusion decoders' UNets, in place (``nn.Module.compile``: parameter names and checkpoints are
            unchanged), with this backend (``inductor``: PyTorch's default); ``None`` (the default) runs them eagerly.
            Opt-in: on 2 CPU cores it made the MoPoE step slower (docs: training, speed); on a GPU it may pay.
        thread_split: on a CPU, split each training batch into this many parts and run each part's forward and
            backward pass on its own thread, the process's intra-op threads shared among them (one each for two
            parts on two cores; :mod:`diffmvae.training.threads`); the gradients are added weighted by each part's
            share, so the objective is the unsplit step's, and each part draws its own noise. 1 (the default) runs the
            batch as one. For a one-process fit on a CPU; elsewhere (a GPU, DDP) it is ignored with a warning.
    """

    def __init__(
        self,
        model: MultimodalModel,
        beta: float = 1.0,
        modality_weights: dict[str, float] | None = None,
        term_weights: dict[str, float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: LRSchedule = "constant",
        warmup_steps: int = 0,
        lr_restarts: Sequence[int] = (),
        sampling: SamplingSettings | None = None,
        seed: int | None = None,
        likelihood_reduction: Reduction = "sum",
        channels_last: bool = False,
        compile_backend: str | None = None,
        thread_split: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        unknown = set(modality_weights or {}) - set(model.modalities)
        if unknown:
            raise ValueError(f"modality_weights names unknown modality {sorted(unknown)[0]!r}")
        if lr_schedule not in get_args(LRSchedule):
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; expected one of {', '.join(get_args(LRSchedule))}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if likelihood_reduction not in get_args(Reduction):
            raise ValueError(f"unknown likelihood_reduction {likelihood_reduction!r}; expected sum or mean")
        self.beta, self.modality_weights, self.likelihood_reduction = beta, dict(modality_weights or {}), likelihood_reduction
        self.term_weights = {**model.default_term_weights(), **(term_weights or {})}
        self.lr, self.weight_decay, self.lr_schedule, self.warmup_steps = lr, weight_decay, lr_schedule, warmup_steps
        self.lr_restarts = sorted(set(lr_restarts))
        if sampling is not None and not isinstance(sampling, SamplingSettings):
            raise TypeError(f"sampling must be a decoders.SamplingSettings, got {type(sampling).__name__}")
        self.sampling = sampling if sampling is not None else SamplingSettings()
        model.check_sampling(self.sampling)
        self.seed, self.channels_last, self.compile_backend = seed, channels_last, compile_backend
        if not isinstance(thread_split, int) or thread_split < 1:
            raise ValueError(f"thread_split must be a whole number >= 1, got {thread_split!r}")
        self.thread_split, self._split = thread_split, 1
        self.skip_terms: frozenset[str] = frozenset()  # term kinds left out of the objective (set by a staging callback)
        self.run_config: dict[str, Any] | None = None  # set by the CLI; stored in checkpoints to rebuild the run
        self._noise: torch.Generator | None = None
        self._noise_state: Tensor | None = None
        self._idle: list[nn.Parameter] = []

    touch_idle: bool | None = None  # touch idle parameters (_touch_idle_parameters): None = under DDP only

    def add_lr_restart(self, step: int) -> None:
        """Restart the learning-rate schedule at ``step`` (called by callbacks in ``setup``, before the optimizer)."""
        self.lr_restarts = sorted({*self.lr_restarts, int(step)})

    # ------------------------------------------------------------------ randomness
    def base_seed(self) -> int:
        return self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_start(self) -> None:
        """On a restart in the middle of an epoch, the data order skips the batches that epoch already trained on
        (Lightning does not, for a loader without state). Lightning calls this before the resumed epoch draws a batch."""
        loop = self.trainer.fit_loop
        # Batches of this process done in the epoch (of its shard under DDP). A checkpoint written in
        # on_train_batch_end (ModelCheckpoint's every_n_train_steps) has counted its last batch as processed, not yet
        # completed; one written on SIGTERM has both.
        current = loop.epoch_loop.batch_progress.current
        done = max(current.completed, current.processed)
        if loop.epoch_loop.restarting and 0 < done < self.trainer.num_training_batches:
            loader = self.trainer.train_dataloader
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "resume"):
                sampler.resume(done * loader.batch_size)
                log.info("resumed in the middle of epoch %d: the first %d batches of its order are left out", loop.epoch_progress.current.processed, done)

    def setup(self, stage: str) -> None:
        """Checkpoints are written to a temporary name and renamed, and read with ``weights_only=True``
        (:class:`~diffmvae.checkpoint.AtomicCheckpointIO`)."""

        install_atomic_checkpoints(self.trainer)

    def apply_memory_format(self) -> None:
        """Put the model's 4-D weights in channels-last order when ``channels_last`` is set (a no-op otherwise)."""
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def compiled_networks(self) -> list[nn.Module]:
        """What ``compile_backend`` compiles: the image and vector encoders and every diffusion UNet."""
        return [m for m in self.model.modules() if isinstance(m, (ConvImageEncoder, MLPEncoder, UNet2d))]

    def on_fit_start(self) -> None:
        processes = self._trainer.world_size if self._trainer is not None else 1
        self._split = parts_on(self.device, self.thread_split) if processes == 1 else 1
        if self._split < self.thread_split:
            log.warning("thread_split %d applies to a one-process CPU fit; this one runs %d process(es) on %s: batches are not split",
                        self.thread_split, processes, self.device.type)
        self.apply_memory_format()
        if self.compile_backend is not None:
            networks = self.compiled_networks()
            for net in networks:
                net.compile(backend=self.compile_backend)
            log.info("compiled %d networks with torch.compile (backend %s)", len(networks), self.compile_backend)
        self._noise = torch.Generator(device=self.device).manual_seed(self.base_seed() + 7919 * self.global_rank)
        if self._noise_state is not None:
            self._noise.set_state(self._noise_state)
            self._noise_state = None

    def noise_generator(self, stage: str) -> torch.Generator:
        """The training-noise generator (its state travels with checkpoints); validation draws from a fresh one
        seeded the same every epoch, so validation losses are comparable across epochs."""
        if stage == "train" and self._noise is not None:
            return self._noise
        return torch.Generator(device=self.device).manual_seed(self.base_seed() + 1)

    # ------------------------------------------------------------------ training
    def _step(self, batch: Mapping[str, Any], stage: str, generator: torch.Generator) -> Tensor:
        x, present = split_batch(batch, self.model.modalities)
        if self.channels_last:
            x = to_channels_last(x)
        weights, n = self.weights_for(x), batch_size(x)

        def part(x_k: Mapping[str, Any], present_k: Tensor | None, g: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
            record = self.model.elbo(x_k, present_k, generator=g, skip=self.skip_terms)
            return record.loss(self.beta, weights, self.term_weights).mean(), record.means()

        if stage == "train" and self._split > 1:
            trained = [p for p in self.model.parameters() if p.requires_grad]
            loss, means = threaded_step(part, x, present, self._split, generator, trained)
        else:
            loss, means = part(x, present, generator)
        if not torch.isfinite(loss):
            bad = [name for name, v in means.items() if not torch.isfinite(v).all()]
            raise DiffMVAEError(f"{stage} step {self.global_step}: the loss is not finite (term {bad[0] if bad else 'weights'}); "
                                "the last checkpoint was written before this step")
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n, sync_dist=stage != "train")
        for name, value in means.items():
            self.log(f"{stage}/{name}", value, batch_size=n, sync_dist=stage != "train")
        return loss

    def weights_for(self, x: Mapping[str, Any]) -> dict[str, float]:
        """The per-modality weights of the objective for the batch ``x``: ``modality_weights``, divided by each
        modality's number of dimensions under ``likelihood_reduction: mean``."""
        if self.likelihood_reduction == "sum":
            return self.modality_weights
        return {m: self.modality_weights.get(m, 1.0) / dimensions(x[m]) for m in self.model.modalities if m in x}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train", self.noise_generator("train"))
        touch = self.touch_idle if self.touch_idle is not None else self.trainer.world_size > 1
        return self._touch_idle_parameters(loss) if touch else loss

    def _touch_idle_parameters(self, loss: Tensor) -> Tensor:
        """Plain DDP needs a gradient for every trainable parameter in every step, but some are idle by design in
        some steps: the UNet during a feed-forward warm-up, ``null_z`` without condition dropout, the decoder of a
        modality a batch lacks. The loss gains a zero-weighted touch of each idle parameter (found by walking the
        autograd graph), so DDP's reduction sees them all; after the reduction, :meth:`on_before_optimizer_step`
        drops the gradient of each one that was idle on every rank (its reduced gradient is exactly zero), so AdamW
        skips it as it does in a one-process run: the optimizer's steps are those of ``find_unused_parameters``
        without its cost, and the same as without DDP."""
        reached = parameters_in_graph(loss)
        self._idle = [p for p in self.model.parameters() if p.requires_grad and id(p) not in reached]
        if not self._idle:
            return loss
        return loss + sum(p.reshape(-1)[0] * 0.0 for p in self._idle)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for p in self._idle:
            if p.grad is not None and not p.grad.any():
                p.grad = None
        self._idle = []

    def on_validation_epoch_start(self) -> None:
        self._val_noise = self.noise_generator("val")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "val", self._val_noise)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay, **self._adamw_kernel())
        if self.lr_schedule == "constant" and self.warmup_steps == 0:
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1) if math.isfinite(self.trainer.estimated_stepping_batches) else 1
        factor = partial(staged_lr_factor, schedule=self.lr_schedule, warmup=self.warmup_steps, total=total, restarts=tuple(self.lr_restarts))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _adamw_kernel(self) -> dict[str, bool]:
        """``fused``: one kernel for the whole update (0.94-0.99x the MoPoE step time of ``foreach`` on 2 CPU
        cores), where every parameter is a float on a CPU or CUDA device and no gradient scaler runs (Lightning refuses
        gradient clipping with a fused optimizer under ``16-mixed``); else ``foreach`` (on CPU, PyTorch's default
        loops over the parameters)."""
        plugin = self.trainer.precision_plugin if self._trainer is not None else None
        scaled = isinstance(plugin, MixedPrecision) and plugin.scaler is not None
        fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in self.model.parameters())
        return {"fused": True} if fusable and not scaled else {"foreach": True}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clips as Lightning does, also under ``bf16-mixed`` with the fused AdamW: Lightning refuses to clip a fused
        optimizer's gradients under any autocast, because under ``16-mixed`` a gradient scaler must unscale them
        first; under ``bf16-mixed`` no scaler runs and the gradients are the true ones, so they are clipped as in
        full precision."""
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The run config and the training-noise generator of every process (each rank draws from its own; under DDP
        every rank joins the checkpoint, so their states are gathered here and rank 0 writes them all)."""
        checkpoint["diffmvae_config"] = self.run_config
        if self._noise is not None:
            state = self._noise.get_state()
            checkpoint["noise_generator"] = state
            trainer = self._trainer
            if trainer is not None and trainer.world_size > 1:
                gathered = self.all_gather(state.to(self.device)).cpu()  # [world, L]
                checkpoint["noise_generators"] = [t.to(torch.uint8).clone() for t in gathered.unbind(0)]  # own storage each

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.run_config = checkpoint.get("diffmvae_config")
        states = checkpoint.get("noise_generators")
        trainer = self._trainer
        rank = trainer.global_rank if trainer is not None else 0
        if states is not None and trainer is not None and len(states) == trainer.world_size:
            self._noise_state = states[rank].to(torch.uint8).contiguous().clone()
        else:  # a one-process checkpoint, or a different number of processes: every rank restarts from rank 0's state
            self._noise_state = checkpoint.get("noise_generator")


def parameters_in_graph(loss: Tensor) -> set[int]:
    """The ids of the leaf tensors (parameters) ``loss``'s autograd graph accumulates gradients into."""
    found: set[int] = set()
    seen: set[Any] = set()
    stack = [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)
        if variable is not None:
            found.add(id(variable))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found
