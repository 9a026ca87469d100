"""Test-only modules that fail on purpose (importable by configs as ``faulty.<Name>``), and a full disk."""

import os
import signal as signals
from contextlib import contextmanager

import lightning as L
import torch

from decoders import ConvImageDecoder


class NaNAfter(ConvImageDecoder):
    """A feed-forward image decoder whose loss turns NaN from its ``after``-th training call on."""

    def __init__(self, *args, after: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.after, self.calls = after, 0

    def loss(self, z, example, *, generator=None, skip=frozenset()):
        terms = super().loss(z, example, generator=generator, skip=skip)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                terms = {k: v * torch.nan for k, v in terms.items()}
        return terms



class SignalAt(L.Callback):
    """Sends ``signal`` to its own process after training step ``step`` (a scheduler's SIGTERM, or Ctrl-C's SIGINT,
    at a known point)."""

    def __init__(self, step: int = 3, signal: str = "SIGTERM") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signals, self.signal))


@contextmanager
def file_size_limit(nbytes):
    """Writes past ``nbytes`` fail with EFBIG (Python ignores SIGXFSZ), as writes on a full disk fail with ENOSPC:
    a full disk for one block of a test, without root or a mount (POSIX)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
