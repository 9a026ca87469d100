"""The configuration pieces of an MT-Diffusion decoder (:mod:`decoders.mt_diffusion`): how each modality conditions
the diffusion (:class:`Aggregate`, the encoder ``E_i``), the heads that predict modalities from the shared UNet
(:class:`Head`), and the heads' networks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decoders.diffusion.aggregation import AggregatedForward, WeightSchedule
from decoders.sampling import check_unconditional

EncoderKind = Literal["identity", "embedding", "structured", "unet", "backbone"]
VECTOR_KINDS = ("unet", "backbone")  # label encoders whose label also enters the UNet's embedding
HeadKind = Literal["image", "label"]
LabelEstimates = Literal["hard", "soft"]
HeadPosition = Literal["mid", "out", "output"]
HeadTimes = Literal["uniform", "signal"]


@dataclass(frozen=True)
class Aggregate:
    """How one modality conditions the diffusion (the encoder ``E_i``).

    Attributes:
        kind: how ``E_i`` maps the modality into the diffusion space:

            * ``identity``: an image modality of the main one's shape, scaled to [-1, 1] (Fig. 3, option 1);
            * ``embedding``: a label as a fixed i.i.d. Gaussian pattern per class (locally it looks like the diffusion
              noise itself);
            * ``structured``: a label as a fixed smooth pattern per class (:func:`structured_patterns`: spatially
              correlated, unlike the noise);
            * ``unet``: a label through the shared UNet, the paper's option 3 (App. E.3): ``E(y) = U-Net(0, y, t =
              0)`` with the label entering the UNet's embedding, under stop-gradient; the denoising passes see the
              label through the same path;
            * ``backbone``: a label entering the UNet's embedding only; it adds no offset.
        num_classes: the classes of a label modality.
        weight: its weight schedule ``w_t`` (default :class:`PaperWeight`); unused for ``backbone``.
        scale: the patterns' standard deviation for ``embedding`` and ``structured``; a factor on the UNet's output
            for ``unet``.
    """

    kind: EncoderKind = "identity"
    num_classes: int | None = None
    weight: WeightSchedule | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("identity", "embedding", "structured", "unet", "backbone"):
            raise ValueError(f"unknown encoder kind {self.kind!r}; choose identity, embedding, structured, unet or backbone")
        if self.kind != "identity" and not self.num_classes:
            raise ValueError(f"a {self.kind!r} encoder is for labels and needs num_classes")


@dataclass(frozen=True)
class Head:
    """A modality head ``D_i`` on the shared backbone: ``kind`` ``label`` (``num_classes`` logits from pooled features)
    or ``image`` (``channels`` at the main image's size, from the output block); ``position`` ``mid`` (the middle
    block, the -M variant), ``out`` (the last up block's features) or, for labels, ``output`` (the paper's -E: a
    classifier, :class:`ClassifierHead`, on the UNet's output and the input it was computed from)."""

    kind: HeadKind = "label"
    position: HeadPosition = "out"
    num_classes: int | None = None
    channels: int = 3

    def __post_init__(self) -> None:
        if self.kind not in ("image", "label"):
            raise ValueError(f"unknown head kind {self.kind!r}; choose image or label")
        if self.position not in ("mid", "out", "output"):
            raise ValueError(f"unknown head position {self.position!r}; choose mid, out or output")
        if self.kind == "label" and not self.num_classes:
            raise ValueError("a label head needs num_classes")
        if self.kind == "image" and self.position != "out":
            raise ValueError("an image head reads the output block: position 'out'")


class LabelHead(nn.Module):
    """Pooled backbone features ``[B, C, h, w] -> logits [B, K]``."""

    def __init__(self, channels: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, num_classes))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.mean(dim=(2, 3)))


class ClassifierHead(nn.Module):
    """The -E label head of Chen et al. 2024 §4.2 ("a pre-defined classifier at the end of the U-Net output"): a small
    convolutional classifier of ``[scaled z_t, UNet output]`` (``2 C`` channels; the pair determines the clean-image
    estimate, whatever the prediction type) -> logits ``[B, K]``."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, num_classes))

    def forward(self, pair: Tensor) -> Tensor:
        return self.net(pair)


class ImageHead(nn.Module):
    """Output-block features ``[B, C, H, W] -> image [B, channels, H, W]`` in [-1, 1]."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(math.gcd(8, channels), channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))

    def forward(self, features: Tensor) -> Tensor:
        return torch.tanh(self.net(features))


def structured_patterns(num_classes: int, shape: tuple[int, int, int], generator: torch.Generator, grid: int | None = None) -> Tensor:
    """One smooth pattern per class ``[K, C, H, W]``: Gaussian values on a ``grid x grid`` lattice (default one point
    per 7 pixels, at least 2: 4 x 4 at 28 px), bicubically up-sampled to ``H x W`` and scaled to unit standard deviation. Neighbouring pixels are strongly correlated (the
    diffusion noise's are not), so a denoiser can tell the label's offset from the noise at every scale."""
    grid = grid or max(2, shape[1] // 7)
    low = torch.randn(num_classes, shape[0], grid, grid, generator=generator)
    up = F.interpolate(low, size=shape[1:], mode="bicubic", align_corners=False)
    return up / up.std(dim=(1, 2, 3), keepdim=True)


def check_null_path(mode: str, cond_dropout: float) -> None:
    """One-line ``ValueError`` for an unknown ``unconditional`` setting, or ``dropped`` without a trained null path."""
    check_unconditional(mode)
    if mode == "dropped" and cond_dropout <= 0:
        raise ValueError("unconditional: dropped samples through the null path, which needs cond_dropout > 0 in training")


def check_settings(label_estimates: str, cond_dropout: float, head_view: float, unconditional: str, head_times: str,
                   read_time: float | None = None) -> None:
    """One-line ``ValueError`` for an :class:`~decoders.mt_diffusion.MTDiffusionDecoder` setting out of its range."""
    if label_estimates not in get_args(LabelEstimates):
        raise ValueError(f"unknown label_estimates {label_estimates!r}; choose hard or soft")
    if not (0.0 <= cond_dropout < 1.0 and 0.0 < head_view < 1.0):
        raise ValueError(f"cond_dropout must be in [0, 1) and head_view in (0, 1), got {cond_dropout} and {head_view}")
    check_null_path(unconditional, cond_dropout)
    if head_times not in get_args(HeadTimes):
        raise ValueError(f"unknown head_times {head_times!r}; choose uniform or signal")
    check_read_time(read_time)


def check_read_time(read_time: float | None) -> None:
    """One-line ``ValueError`` for a ``read_time`` outside (0, 1] (``None``: the first noise level)."""
    if read_time is not None and not 0.0 < read_time <= 1.0:
        raise ValueError(f"read_time is a fraction of the diffusion's T, in (0, 1]; got {read_time}")


def signal_weights(forward: AggregatedForward, t: Tensor) -> Tensor:
    """``head_times: signal``: a head's term at training times ``t`` weighted by the image's share of ``z_t``'s
    variance, ``abar_t``, over its mean on the grid ``t = 1..T`` (so ``lambda`` keeps its mean weight; the terms move to
    the times where the image can be read)."""
    alpha_bar = forward.alpha_bar
    return alpha_bar[forward.index(t).to(alpha_bar.device)] / alpha_bar[1:].mean()


def need_spec(spec: Any, name: str, kind: str, shape: tuple[int, ...] | None = None, classes: int | None = None, what: str = "") -> None:
    """One-line ``ValueError`` unless the data's ``spec`` of modality ``name`` is an image of ``shape`` or a label with
    ``classes`` classes, as the MT-Diffusion part ``what`` needs."""
    if spec.kind != kind or (shape is not None and tuple(spec.shape) != shape) or (classes is not None and spec.num_classes != classes):
        found = f"{spec.kind} {list(spec.shape)}" + (f" with {spec.num_classes} classes" if spec.num_classes else "")
        want = f"an image {list(shape)}" if kind == "image" else f"a label with {classes} classes"
        raise ValueError(f"MT-Diffusion {what} of {name!r} needs {want}; the data has {found}")
