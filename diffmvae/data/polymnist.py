"""PolyMNIST from a local folder in the published layout (Sutter et al. 2021)::

    ROOT/train/m0/{index}.{digit}.png   ...   ROOT/train/m{M-1}/...
    ROOT/test/m0/{index}.{digit}.png    ...

Files with the same ``index`` across ``m*`` folders form one example; their digits must agree. Images are
28x28 RGB PNGs. ``val`` is a seeded ``val_fraction`` of ``train`` (PolyMNIST has no validation split).
Nothing is downloaded: a missing folder or a malformed file name is reported in one line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

FILE_NAME = re.compile(r"^(\d+)\.(\d)\.png$")
Split = Literal["train", "val", "test"]


def _index_folder(folder: Path) -> dict[int, tuple[int, Path]]:
    if not folder.is_dir():
        raise FileNotFoundError(f"PolyMNIST folder {folder} does not exist (expected ROOT/train|test/m0..m{{M-1}}/INDEX.DIGIT.png)")
    out = {}
    for path in folder.iterdir():
        match = FILE_NAME.match(path.name)
        if match is None:
            if path.suffix == ".png":
                raise ValueError(f"PolyMNIST file {path} is not named INDEX.DIGIT.png")
            continue
        out[int(match.group(1))] = (int(match.group(2)), path)
    if not out:
        raise FileNotFoundError(f"PolyMNIST folder {folder} holds no INDEX.DIGIT.png files")
    return out


def read_image(path: Path) -> Tensor:
    """A PNG as a float ``[3, H, W]`` tensor in ``[0, 1]``."""
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise ValueError(f"PolyMNIST file {path} is not a readable image ({e})") from e
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class PolyMNIST(Dataset):
    """Items ``{"m0": [3, 28, 28] in [0, 1], ..., "label": int}`` from ``root``.

    Args:
        root: the folder holding ``train/`` and ``test/``.
        split: ``train``, ``val`` (a seeded ``val_fraction`` of train) or ``test``.
        num_modalities: how many of ``m0..`` to use.
        modalities: read only these folders (e.g. ``("m0", "m2")``) instead.
    """

    def __init__(self, root: str | Path, split: Split = "train", num_modalities: int = 5, val_fraction: float = 0.1, seed: int = 0,
                 modalities: tuple[str, ...] | None = None) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; choose train, val or test")
        self.root, self.split = Path(root), split
        self.modalities = tuple(modalities) if modalities else tuple(f"m{k}" for k in range(num_modalities))
        folders = [_index_folder(self.root / ("test" if split == "test" else "train") / m) for m in self.modalities]
        indices = sorted(set(folders[0]).intersection(*folders[1:]))
        for m, folder in zip(self.modalities, folders):
            for i in indices:
                if folder[i][0] != folders[0][i][0]:
                    raise ValueError(f"PolyMNIST file {folder[i][1]} has digit {folder[i][0]} but {folders[0][i][1]} has {folders[0][i][0]}")
        if split != "test":
            order = np.random.default_rng(seed).permutation(len(indices))
            n_val = int(round(val_fraction * len(indices)))
            keep = order[:n_val] if split == "val" else order[n_val:]
            indices = [indices[i] for i in sorted(keep)]
        self.files = [[folder[i][1] for folder in folders] for i in indices]
        self.labels = torch.tensor([folders[0][i][0] for i in indices], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Tensor | int]:
        item: dict[str, Tensor | int] = {m: read_image(path) for m, path in zip(self.modalities, self.files[i])}
        item["label"] = int(self.labels[i])
        return item
