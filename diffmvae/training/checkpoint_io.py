"""Rebuild a trained run from its checkpoint without running pickled code.

``diffmvae fit`` stores the run's model and data configs (``class_path`` / ``init_args`` dicts, as LightningCLI
parsed them) in ``checkpoint["diffmvae_config"]``; loading reads the file with ``weights_only=True`` and
instantiates only classes from this library's packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from diffmvae.io import DiffMVAEError, atomic_write, load_tensors, torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer with this library's file rules, for local paths (remote ones go to
    Lightning's own). Writing: to a temporary file beside the target, renamed onto it — Lightning's writer builds the
    file in the system's temporary folder and moves it, which between two file systems is a copy that a full disk
    cuts short, leaving a truncated ``last.ckpt`` where the good one was; a failed write here is one line and the
    previous checkpoint stays whole. Reading (``--ckpt_path``): ``weights_only=True``, so a crafted file never runs
    code, and an unreadable one is one line. :meth:`TrainingModule.setup <diffmvae.TrainingModule.setup>` installs it
    in place of Lightning's default."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(path, lambda tmp: torch_save(checkpoint, tmp))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_training_checkpoint(path)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint Lightning can resume from (``--ckpt_path``), read with ``weights_only=True``; one line otherwise."""
    checkpoint = read_checkpoint(path)
    if "pytorch-lightning_version" not in checkpoint:
        raise DiffMVAEError(f"checkpoint {path} is not a training checkpoint (a prior or classifier file?); --ckpt_path resumes a "
                            "`diffmvae fit` run from its checkpoints/last.ckpt")
    return checkpoint


def install_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Use :class:`AtomicCheckpointIO` when the trainer's strategy has Lightning's default checkpoint writer (a
    writer the user configured, or a sharded strategy's own, is left alone)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-line errors for a missing or unreadable file."""
    ckpt = load_tensors(path, "checkpoint", unreadable="is not a readable checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DiffMVAEError(f"checkpoint {path} has no 'state_dict'; is it a Lightning checkpoint?")
    return ckpt
