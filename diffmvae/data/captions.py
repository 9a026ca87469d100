"""Captioned PolyDigits: a ``text`` modality whose caption names the digit in varied phrasings (a word or a numeral,
several templates, the digit anywhere in the sentence, as in MoPoE's MNIST-SVHN-Text) and describes one visible
property of an image: the brightness and hue of modality ``m1``'s background (``m0``'s when there is one modality). Deterministic by seed and index."""

from __future__ import annotations

import colorsys
import re

import numpy as np
import torch
from torch.utils.data import Dataset

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HUES = ((15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "teal"), (260, "blue"), (320, "purple"), (345, "pink"), (360, "red"))
TEMPLATES = (
    "a handwritten {d} on a {c} background",
    "the digit {d} drawn over {c} texture",
    "{c} background with the number {d}",
    "this picture shows a {d} , the background is {c}",
    "{d} written in inverted strokes on {c}",
    "number {d} ; the backdrop looks {c}",
    "on a {c} texture someone wrote {d}",
    "a {c} image of the digit {d}",
)


def colour_name(rgb: torch.Tensor) -> str:
    """A two-word name of a mean colour: ``dark``/``light`` and a hue (or ``grey`` when unsaturated)."""
    r, g, b = (float(v) for v in rgb)
    hue, light, sat = colorsys.rgb_to_hls(r, g, b)
    shade = "dark" if light < 0.5 else "light"
    if sat < 0.12:
        return f"{shade} grey"
    degrees = hue * 360
    return f"{shade} {next(name for bound, name in HUES if degrees <= bound)}"


def make_caption(label: int, rgb: torch.Tensor, rng: np.random.Generator) -> str:
    digit = WORDS[label] if rng.random() < 0.5 else str(label)
    return TEMPLATES[rng.integers(len(TEMPLATES))].format(d=digit, c=colour_name(rgb))


def parse_digit(text: str) -> int:
    """The digit a caption names (the first digit word or numeral), or -1 when it names none."""
    for token in re.findall(r"[a-z]+|\d", text.lower()):
        if token.isdigit():
            return int(token)
        if token in WORDS:
            return WORDS.index(token)
    return -1


def captions_for(base: Dataset, seed: int) -> list[str]:
    """One caption per example of a :class:`~diffmvae.data.PolyDigits` set (its labels and ``m1``'s background)."""
    described = min(1, base.background_rgb.shape[1] - 1)
    return [make_caption(int(base.labels[i]), base.background_rgb[i, described], np.random.default_rng([seed, 11, i])) for i in range(len(base))]


class Captioned(Dataset):
    """Wraps a PolyDigits set: items gain ``text`` (token ids and mask of the example's caption)."""

    def __init__(self, base: Dataset, captions: list[str], encoded: dict[str, torch.Tensor], name: str = "text") -> None:
        self.base, self.captions, self.encoded, self.name = base, captions, encoded, name

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {**self.base[i], self.name: {k: v[i] for k, v in self.encoded.items()}}
