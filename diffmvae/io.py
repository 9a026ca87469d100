"""Small I/O helpers: one error type for user-facing failures, atomic writes, PNG output."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor


class DiffMVAEError(Exception):
    """A problem with the user's input (a path, a config value, a modality name): the CLI prints its message
    as one line and exits non-zero."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``: a reader never
    sees a half-written file and a failed write leaves the old file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """The content of a YAML file (``yaml.safe_load``), with one-line errors naming ``what`` and the file when it is
    missing or not valid YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DiffMVAEError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DiffMVAEError(f"{what} {path} is not valid YAML ({' '.join(str(err).split())[:160]})") from None


def file_sha256(path: str | os.PathLike) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_safetensors(path: str | os.PathLike, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and the metadata of a safetensors file (no pickle), with one-line errors for a missing,
    truncated or otherwise unreadable file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DiffMVAEError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises SafetensorError / OSError for a bad header or short data
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DiffMVAEError(f"{what} {path} is not a readable safetensors file ({first})") from e


def load_tensors(path: str | os.PathLike, what: str, *, missing_hint: str = "", unreadable: str = "is not readable") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` (never runs pickled code) with one-line
    errors naming ``what`` and the file: ``{what} {path} does not exist{missing_hint}`` or
    ``{what} {path} {unreadable} (<first line of the cause>)``."""
    path = Path(path)
    if not path.is_file():
        raise DiffMVAEError(f"{what} {path} does not exist{missing_hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DiffMVAEError(f"{what} {path} {unreadable} ({first})") from e


def save_png(image: Tensor, path: str | os.PathLike) -> Path:
    """Write ``[3, H, W]`` or ``[1, H, W]`` values in [0, 1] as an 8-bit PNG, atomically."""
    if image.dim() != 3:
        raise ValueError(f"save_png expects [C, H, W], got {list(image.shape)}")
    array = (image.detach().float().clamp(0, 1).cpu() * 255).round().to(torch.uint8)
    array = array.expand(3, -1, -1) if array.shape[0] == 1 else array
    pil = Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy()))
    return atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"))


def image_grid(columns: list[Tensor], pad: int = 2, value: float = 1.0) -> Tensor:
    """Tile columns of images: ``columns[j]`` is ``[N, C, H, W]`` (all the same shape), ``N`` rows.

    Returns ``[3, N*(H+pad)+pad, J*(W+pad)+pad]``.
    """
    if not columns:
        raise ValueError("image_grid needs at least one column")
    n, c, h, w = columns[0].shape
    grid = torch.full((3, n * (h + pad) + pad, len(columns) * (w + pad) + pad), value)
    for j, col in enumerate(columns):
        col = col.detach().float().cpu().clamp(0, 1)
        col = col.expand(-1, 3, -1, -1) if col.shape[1] == 1 else col
        for i in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y : y + h, x : x + w] = col[i]
    return grid
