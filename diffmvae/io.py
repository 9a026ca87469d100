"""Small I/O helpers: one error type for user-facing failures, atomic writes, PNG output."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # the permissions open() gives a new file under this process's umask


class DiffMVAEError(Exception):
    """A problem with the user's input (a path, a config value, a modality name): the CLI prints its message
    as one line and exits non-zero."""


@contextmanager
def writing(target: str | os.PathLike) -> Iterator[None]:
    """An ``OSError`` in the block (a full disk, a read-only or unwritable folder, a file-size limit) becomes one line
    naming ``target``; the writers in this library write to temporary names, so what ``target`` held is kept."""
    try:
        yield
    except OSError as e:
        raise DiffMVAEError(f"cannot write {target}: {e.strerror or one_line(e)} (nothing there was replaced)") from e


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(e).split()) or type(e).__name__


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], cell: Callable[[Any], str] = str) -> str:
    """A GitHub markdown table: a header of ``columns``, then one line per row with each value through ``cell``
    (every table the library writes goes through here)."""
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``: a reader never
    sees a half-written file and a failed write (an error, a full disk, a killed process) leaves the old file as it
    was; an ``OSError`` is one line naming ``path`` (:func:`writing`)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else FILE_MODE)  # mkstemp's 0600 would hide it from others
        try:
            write(Path(tmp))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` into memory, then one write to ``path`` flushed to disk (as Lightning's own checkpoint writer
    does): a failed write (a full disk) raises ``OSError`` with its reason, where torch's zip writer writing to the
    file itself reports it as an opaque ``RuntimeError``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())


def save_safetensors(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """A safetensors file written through Python (a failed write raises ``OSError``, as in :func:`torch_save`)."""

    Path(path).write_bytes(save(tensors, metadata=metadata))


def tensors_for_safetensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies: safetensors refuses tensors that share memory (a module shared by two decoders
    appears under both names in a state dict); loading fills each name from its own copy."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def write_files(out: str | os.PathLike, writers: dict[str, Callable[[Path], None]]) -> list[Path]:
    """Write a set of files into the folder ``out``: each ``writers[name](path)`` writes into a temporary folder
    inside ``out``, and only once all are written is each renamed onto ``out/name``; a failure (a full disk) leaves
    every earlier file in ``out`` as it was, and is one line naming ``out``."""
    out = Path(out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".writing.", dir=out))
        try:
            for name, write in writers.items():
                write(tmp / name)
            for name in writers:
                os.replace(tmp / name, out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [out / name for name in writers]


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Before any work: a file can be created in ``folder``, or in its nearest existing ancestor when it does not
    exist yet (nothing is created); one line naming ``what`` and the folder otherwise."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise DiffMVAEError(f"{what} {folder} cannot be created: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DiffMVAEError(f"{what} {folder} is not writable: {e.strerror or one_line(e)}") from e


def refuse_existing(path: str | os.PathLike, overwrite: bool, what: str = "--out") -> Path:
    """The rule of every command that writes: an existing output is refused, naming it, unless ``--overwrite``."""
    path = Path(path)
    if not overwrite and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DiffMVAEError(f"{what} {path} already exists; pass --overwrite to replace it, or choose another (nothing was written)")
    return path


def check_out_dir(out: str | os.PathLike, overwrite: bool = True) -> Path:
    """An output folder (``--out``) as a Path, refused before any work when it is a file, cannot be written, or
    (``overwrite=False``) already holds files."""
    out = refuse_existing(out, overwrite)
    if out.exists() and not out.is_dir():
        raise DiffMVAEError(f"--out {out} exists and is not a directory")
    check_writable(out, "--out")
    return out


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """The content of a YAML file (``yaml.safe_load``), with one-line errors naming ``what`` and the file when it is
    missing or not valid YAML."""

    path = Path(path)
    if not path.is_file():
        raise DiffMVAEError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DiffMVAEError(f"{what} {path} is not valid YAML ({' '.join(str(err).split())[:160]})") from None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_safetensors(path: str | os.PathLike, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and the metadata of a safetensors file (no pickle), with one-line errors for a missing,
    truncated or otherwise unreadable file."""

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
