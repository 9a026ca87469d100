"""Observed modalities from files the user passes (``diffmvae sample --inputs``), so a model folder samples with
nothing else: an ``.npz`` holding one array per modality, or image files given per modality.

- ``FILE.npz``: ``images`` as ``[N, C, H, W]`` or ``[N, H, W, C]``, float in [0, 1] or 8-bit; ``label`` as ``[N]``
  integers; ``text`` as ``[N]`` strings (encoded with the model's own tokenizer); other kinds as ``[N, ...]``
  floats of the modality's shape.
- ``MODALITY=A.png,B.png``: image files, converted to the modality's channels and resized to its size.

Every modality named by ``--given`` must be covered, and all of them with the same number of examples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffmvae.data.files import open_image, to_array
from diffmvae.data.spec import ModalitySpec
from diffmvae.io import DiffMVAEError

EncodeText = Callable[[str, Sequence[str]], Mapping[str, Tensor]]


def image_file(path: Path, spec: ModalitySpec, what: str) -> np.ndarray:
    """One image file as the modality's ``[C, H, W]`` float array in [0, 1] (channels converted, resized)."""
    channels, height, width = spec.shape
    im = open_image(path, what, "RGB" if channels == 3 else "L")
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.BILINEAR)
    return to_array(im)


def npz_array(array: np.ndarray, spec: ModalitySpec, where: str, encode: Callable[[Sequence[str]], Mapping[str, Tensor]]) -> Any:
    """An ``.npz`` array as the modality's batch (a tensor, or a text modality's tensors)."""
    if spec.is_text:
        if array.ndim != 1 or array.dtype.kind not in "US":
            raise DiffMVAEError(f"{where} must be a 1-d array of strings for a text modality, got {array.dtype} {list(array.shape)}")
        return dict(encode([str(t) for t in array]))
    if spec.kind == "label":
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise DiffMVAEError(f"{where} must be a 1-d integer array for a label modality, got {array.dtype} {list(array.shape)}")
        return torch.as_tensor(array, dtype=torch.long)
    if array.dtype.kind not in "iuf":
        raise DiffMVAEError(f"{where} must be numeric, got {array.dtype}")
    if spec.is_image and array.ndim == 4 and array.shape[1:] != spec.shape and array.shape[-1] == spec.shape[0]:
        array = array.transpose(0, 3, 1, 2)  # [N, H, W, C]
    if tuple(array.shape[1:]) != spec.shape:
        raise DiffMVAEError(f"{where} has examples of shape {list(array.shape[1:])}; the model's modality has {list(spec.shape)}")
    values = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)
    return torch.from_numpy(np.ascontiguousarray(values))


def read_inputs(sources: Sequence[str], given: Sequence[str], specs: Mapping[str, ModalitySpec],
                encode_text: EncodeText) -> tuple[dict[str, Any], int]:
    """The batch of the observed modalities ``given`` read from ``sources`` (see the module docstring), and its
    number of examples."""
    batch: dict[str, Any] = {}
    for source in sources:
        name, eq, files = source.partition("=")
        if eq and not name.endswith(".npz"):
            if name not in given:
                raise DiffMVAEError(f"--inputs {source!r}: {name!r} is not a modality of --given ({', '.join(given) or 'none'})")
            if not specs[name].is_image:
                raise DiffMVAEError(f"--inputs {source!r}: image files are read for image modalities; {name!r} is {specs[name].kind} (use an .npz)")
            paths = [Path(p) for p in files.split(",") if p]
            batch[name] = torch.from_numpy(np.stack([image_file(p, specs[name], f"--inputs {name}") for p in paths]))
            continue
        path = Path(source)
        if not path.is_file():
            raise DiffMVAEError(f"--inputs {path} does not exist (an .npz, or MODALITY=IMAGE[,IMAGE...])")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {m: data[m] for m in given if m in data.files}
        except (OSError, ValueError) as e:
            raise DiffMVAEError(f"--inputs {path} is not a readable .npz ({' '.join(str(e).split())[:120]})") from None
        for m, array in arrays.items():
            batch[m] = npz_array(array, specs[m], f"--inputs {path}: {m!r}", lambda texts, m=m: encode_text(m, texts))
    missing = [m for m in given if m not in batch]
    if missing:
        raise DiffMVAEError(f"--inputs gives no {missing[0]!r}, which --given observes")
    sizes = {m: len(v["input_ids"] if isinstance(v, Mapping) else v) for m, v in batch.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise DiffMVAEError(f"--inputs give different numbers of examples per modality: {sizes}")
    return {m: batch[m] for m in given}, next(iter(sizes.values()))
