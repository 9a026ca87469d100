"""Where the commands that are not LightningCLI (``sample``, ``evaluate``, ``prior fit``, ``classifiers fit``) run:
Lightning's names for the accelerator, the devices and the precision, resolved to one ``torch.device`` and an
autocast context. ``fit`` takes the same names through ``--trainer.accelerator/devices/precision``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from diffmvae.io import DiffMVAEError

ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
PRECISIONS = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def add_device_arguments(parser: Any) -> None:
    parser.add_argument("--accelerator", default="auto", help=f"one of {', '.join(ACCELERATORS)} (auto: a GPU when there is one)")
    parser.add_argument("--devices", default="auto", help="which device: auto, 1, or one index such as [1] (these commands use one device)")
    parser.add_argument("--precision", default="32-true", help=f"one of {', '.join(PRECISIONS)} (mixed: autocast on the device)")


def pick_device(accelerator: str = "auto", devices: Any = "auto") -> torch.device:
    """The one device ``accelerator`` / ``devices`` name, or a one-line error when it is not there."""
    if accelerator not in ACCELERATORS:
        raise DiffMVAEError(f"--accelerator {accelerator!r} is not one of {', '.join(ACCELERATORS)}")
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    accelerator = "cuda" if accelerator == "gpu" else accelerator
    index = parse_index(devices)
    if accelerator == "cpu":
        return torch.device("cpu")
    available = torch.cuda.device_count() if accelerator == "cuda" else int(torch.backends.mps.is_available())
    if available == 0:
        raise DiffMVAEError(f"--accelerator {accelerator}: no such device on this machine (use --accelerator cpu or auto)")
    if index >= available:
        raise DiffMVAEError(f"--devices [{index}]: this machine has {available} {accelerator} device(s)")
    return torch.device(accelerator, index)


def parse_index(devices: Any) -> int:
    """The device index of Lightning's ``devices``: a count (``auto``, ``1``, ``-1``: the first device) or a list of
    one index (``[1]``: device 1)."""
    raw = str(devices).strip()
    text = raw.strip("[]").strip(",").strip()
    if raw.startswith("[") and text.isdigit():
        return int(text)
    if text in ("auto", "1", "-1", ""):
        return 0
    raise DiffMVAEError(f"--devices {devices!r}: these commands run on one device (auto, 1, or one index such as [1])")


@contextlib.contextmanager
def precision(name: str, device: torch.device) -> Iterator[None]:
    """Autocast for a mixed precision (``bf16-mixed``, ``16-mixed``); nothing for full precision."""
    if name not in PRECISIONS:
        raise DiffMVAEError(f"--precision {name!r} is not one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[name]
    if dtype is None:
        yield
        return
    if dtype == torch.float16 and device.type == "cpu":
        raise DiffMVAEError("--precision 16-mixed needs a GPU; use bf16-mixed on CPU")
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
