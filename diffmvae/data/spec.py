"""Modality specs: what a data set declares about each of its modalities.

Everything that needs to know what a modality is (the sample grids, the judges of evaluation, the null value of a
missing modality, which modalities ``samples.npz`` stores as images) reads the spec instead of guessing from tensor
shapes. Every data module exposes ``specs: dict[str, ModalitySpec]`` in modality order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Kind = Literal["image", "label", "attributes", "vector", "text"]
Judge = Literal["classifier", "value", "match", "none"]


@dataclass(frozen=True)
class ModalitySpec:
    """Attributes:
        kind: ``image`` (float ``[C, H, W]`` in [0, 1]), ``label`` (an integer class, shape ``()``), ``attributes``
            (a 0/1 vector ``[A]``), ``vector`` (float ``[D]``) or ``text`` (``{"input_ids", "attention_mask"}``, each
            ``[L]`` long: :mod:`diffmvae.text`).
        shape: the shape of one example.
        num_classes: the classes of a ``label`` modality; the tokenizer's vocabulary size of a ``text`` one.
        judge: how evaluation reads a generated sample against the example's label: ``classifier`` (a classifier
            trained on the real modality, the coherence protocol of the evaluation), ``value`` (the modality is itself
            the label), ``match`` (compared with the example's own value: F1 and IoU of a binary mask) or ``none``.
        text_keys: the tensors of a ``text`` example (``encoder_*`` too when the encoder has its own tokenizer).
    """

    kind: Kind
    shape: tuple[int, ...]
    num_classes: int | None = None
    judge: Judge = "classifier"
    text_keys: tuple[str, ...] = ("input_ids", "attention_mask")

    def __post_init__(self) -> None:
        if self.kind == "image" and len(self.shape) != 3:
            raise ValueError(f"an image modality has shape [C, H, W], got {list(self.shape)}")
        if self.kind == "label" and (self.shape != () or not self.num_classes):
            raise ValueError("a label modality has shape () and num_classes")

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    @property
    def dtype(self) -> torch.dtype:
        return torch.long if self.kind in ("label", "text") else torch.float32

    @property
    def is_text(self) -> bool:
        return self.kind == "text"

    def null(self) -> Tensor | dict[str, Tensor]:
        """The placeholder of one missing example (zeros of the modality's shape and dtype); models never read it,
        since every term and expert of a missing modality is masked out."""
        if self.is_text:
            return {key: torch.zeros(self.shape, dtype=torch.long) for key in self.text_keys}
        return torch.zeros(self.shape, dtype=self.dtype)


def image_spec(channels: int = 3, size: int = 28) -> ModalitySpec:
    return ModalitySpec("image", (channels, size, size))
