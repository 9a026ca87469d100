"""Reading the files of a data set's official release, with one-line errors that name the file: a missing folder or
file, a row that does not parse, an unreadable image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from diffmvae.io import DiffMVAEError


def need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DiffMVAEError(f"{what} folder {path} does not exist")
    return path


def need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DiffMVAEError(f"{what} file {path} does not exist")
    return path


def read_table(path: Path, columns: int, parse: Callable[[list[str]], object], *, what: str, skip: int = 0) -> list:
    """The whitespace-separated rows of a text file after ``skip`` header lines, each parsed by ``parse`` (which
    gets exactly ``columns`` fields); a row with another number of fields or a value ``parse`` rejects gives one
    line naming the file and the line."""
    need_file(path, what)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DiffMVAEError(f"{what} file {path} could not be read ({e})") from None
    rows = []
    for number, line in enumerate(lines[skip:], start=skip + 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns:
            raise DiffMVAEError(f"{what} file {path} line {number}: expected {columns} fields, got {len(fields)}")
        try:
            rows.append(parse(fields))
        except ValueError as e:
            raise DiffMVAEError(f"{what} file {path} line {number}: {e}") from None
    if not rows:
        raise DiffMVAEError(f"{what} file {path} holds no rows")
    return rows


def open_image(path: Path, what: str, mode: str = "RGB") -> Image.Image:
    """An image file converted to ``mode`` (read fully, so a truncated file fails here)."""
    if not path.is_file():
        raise DiffMVAEError(f"{what} file {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DiffMVAEError(f"{what} file {path} is not a readable image ({' '.join(str(e).split())[:120]})") from None


def to_array(im: Image.Image) -> np.ndarray:
    """An 8-bit image as float32 ``[C, H, W]`` in [0, 1]."""
    a = np.asarray(im, dtype=np.float32) / 255.0
    return (a[None] if a.ndim == 2 else a.transpose(2, 0, 1)).copy()


def val_split(indices: list[int], split: str, fraction: float, seed: int) -> list[int]:
    """``train`` or ``val``: a seeded ``fraction`` of ``indices`` held out for validation (for releases that ship no
    validation split); ``test`` and others pass through."""
    if split not in ("train", "val"):
        return indices
    order = np.random.default_rng(seed).permutation(len(indices))
    n_val = int(round(fraction * len(indices)))
    keep = order[:n_val] if split == "val" else order[n_val:]
    return [indices[i] for i in sorted(keep)]
