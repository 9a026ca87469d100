"""Random draws that work for a model on any device with a generator on any device.

A ``torch.Generator`` lives on one device and can only fill tensors there. These helpers draw on the generator's
device (so a CPU generator gives the same numbers whatever the model's device) and move the result to the device
of the tensors it feeds. With ``generator=None`` they draw from the global RNG of ``device``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _source(generator: torch.Generator | None, device: torch.device | str) -> torch.device | str:
    return generator.device if generator is not None else device


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal draws ``shape`` on ``device``."""
    return torch.randn(shape, generator=generator, device=_source(generator, device), dtype=dtype).to(device)


def rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform draws on ``[0, 1)`` ``shape`` on ``device``."""
    return torch.rand(shape, generator=generator, device=_source(generator, device), dtype=dtype).to(device)


def randperm(n: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """A random permutation of ``0..n-1`` on ``device``."""
    return torch.randperm(n, generator=generator, device=_source(generator, device)).to(device)


def multinomial(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of ``probs [B, K]`` (``[B]``), on ``probs``' device."""
    source = _source(generator, probs.device)
    return torch.multinomial(probs.to(source), 1, generator=generator).squeeze(-1).to(probs.device)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """Integers uniform in ``0..high-1``, ``shape``, on ``device``."""
    return torch.randint(high, shape, generator=generator, device=_source(generator, device)).to(device)
