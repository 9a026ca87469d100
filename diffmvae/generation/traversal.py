"""Latent traversals: what the notebooks under ``experiments/notebooks/`` compute, as plain functions.

- :func:`kl_per_dimension` ranks the latent dimensions by how much information the encoders put in them;
- :func:`dimension_sweep` moves one dimension at a time through a range of values around a latent;
- :func:`interpolate` walks between the latents of two examples (linearly, or on the sphere);
- :func:`posterior_loop` walks through draws of ``q(z | x_given)`` for one observed example (a closed loop of exact
  posterior draws);
- :func:`prior_walk` chains draws under the score prior, each one the last noised part-way and denoised back;
- :func:`decode_frames` decodes a sequence of latents in every modality with the *same* noise for every frame, so that
  diffusion-decoded frames differ only through ``z``; :func:`frames_figure` draws them as a grid.

Randomness flows from the generators passed in; every function runs on the model's device.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from decoders import SamplingSettings
from diffmvae.data.batches import cat_batches, collate_split, num_rows, take_rows
from diffmvae.generation.sampling import choose_prior
from diffmvae.io import image_grid
from diffmvae.model.vae import MultimodalVAE
from diffmvae.store.load import load_run
from diffmvae.store.prior_file import default_prior_path


@torch.no_grad()
def kl_per_dimension(model: MultimodalVAE, data: Mapping[str, Any], batch_size: int = 256) -> Tensor:
    """The mean over ``data``'s examples of ``KL(q(z | X) || N(0, 1))`` per latent dimension, ``[d]`` (nats), with
    ``q(z | X)`` the joint posterior of the modalities in ``data``. Dimensions the encoders do not use have ~0."""
    device = model.device_of()
    n = num_rows(next(iter(data.values())))
    total = torch.zeros(model.latent_dim, dtype=torch.float64, device=device)
    for i in range(0, n, batch_size):
        mu, logvar = model.posterior({m: take_rows(v, i, i + batch_size, device) for m, v in data.items() if m in model.modalities})
        total += (0.5 * (mu**2 + logvar.exp() - 1.0 - logvar)).double().sum(0)
    return (total / n).float()


def dimension_sweep(z: Tensor, dims: Sequence[int], values: Tensor) -> Tensor:
    """``[len(dims) * K, d]``: for each dimension in ``dims`` (row-major), ``z [d]`` with that dimension set to each of
    the ``K`` ``values`` in turn."""
    if z.dim() != 1:
        raise ValueError(f"dimension_sweep takes one latent [d], got {list(z.shape)}")
    bad = [k for k in dims if not 0 <= k < z.shape[0]]
    if bad:
        raise ValueError(f"dimension {bad[0]} is out of range for a {z.shape[0]}-d latent")
    frames = z.expand(len(dims), values.shape[0], -1).clone()
    for row, k in enumerate(dims):
        frames[row, :, k] = values.to(z)
    return frames.reshape(-1, z.shape[0])


def interpolate(z_a: Tensor, z_b: Tensor, steps: int, mode: str = "linear") -> Tensor:
    """``[steps, d]`` latents from ``z_a`` to ``z_b`` (both ends included): ``linear``, or ``slerp`` (along the great
    circle, keeping the norm a Gaussian latent typically has)."""
    if steps < 2:
        raise ValueError(f"interpolate needs steps >= 2, got {steps}")
    t = torch.linspace(0.0, 1.0, steps, device=z_a.device, dtype=z_a.dtype)[:, None]
    if mode == "linear":
        return (1 - t) * z_a + t * z_b
    if mode != "slerp":
        raise ValueError(f"unknown interpolation {mode!r}; choose linear or slerp")
    cos = torch.dot(z_a, z_b) / (z_a.norm() * z_b.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return (1 - t) * z_a + t * z_b
    return (torch.sin((1 - t) * omega) * z_a + torch.sin(t * omega) * z_b) / torch.sin(omega)


@torch.no_grad()
def posterior_loop(model: MultimodalVAE, given: Mapping[str, Any], steps: int, generator: torch.Generator) -> Tensor:
    """``[steps, d]`` draws of ``q(z | x_given)`` for the one example in ``given`` (each value ``[1, ...]``), on a closed
    loop ``mu + sigma * (cos(theta) e1 + sin(theta) e2)`` through two standard-normal draws ``e1``, ``e2``: every frame
    is marginally an exact posterior draw, and neighbours are close."""
    if num_rows(next(iter(given.values()))) != 1:
        raise ValueError("posterior_loop walks the posterior of one example: give each modality as a batch of 1")
    mu, logvar = model.posterior(dict(given))
    e = torch.randn(2, mu.shape[1], generator=generator, device=generator.device).to(mu)
    theta = torch.linspace(0.0, 2 * math.pi, steps + 1, device=mu.device, dtype=mu.dtype)[:-1, None]
    return mu + (0.5 * logvar).exp() * (torch.cos(theta) * e[0] + torch.sin(theta) * e[1])


@torch.no_grad()
def prior_walk(prior: Any, steps: int, generator: torch.Generator, *, start: float = 0.3, z0: Tensor | None = None) -> Tensor:
    """``[steps, d]`` latents under a score prior (:class:`~priors.ScorePrior`): ``z0`` (default: a prior draw), then
    each next one the previous noised to time ``start`` and denoised by the prior's DDIM. Small ``start`` takes small
    steps; every frame lies where the prior puts mass."""
    if not 0.0 < start < 1.0:
        raise ValueError(f"prior_walk's start must be in (0, 1), got {start}")
    device = prior.mean.device
    z = prior.sample(1, generator=generator, device=device) if z0 is None else z0.reshape(1, -1).to(device)
    frames = [z]
    for _ in range(steps - 1):
        z = prior.sample(1, generator=generator, device=device, start=start, anchor=z)
        frames.append(z)
    return torch.cat(frames)


@torch.no_grad()
def decode_frames(model: MultimodalVAE, z: Tensor, *, seed: int = 0, sampling: SamplingSettings = SamplingSettings(),
                  given: Mapping[str, Any] | None = None, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Decode ``z [F, d]`` frame by frame in every modality (or ``names``), each frame with a generator seeded by
    ``seed``: diffusion decoders start every frame from the same noise, so frames differ only through ``z``.
    Returns ``{modality: [F, ...]}`` (text: ``{input_ids, attention_mask}``)."""

    device = model.device_of()
    z = z.to(device)
    frames: dict[str, list] = {}
    for i in range(z.shape[0]):
        generator = torch.Generator(device=device).manual_seed(seed)
        out = model.decode(z[i : i + 1], names, given=given, sampling=sampling, generator=generator)
        for m, v in out.items():
            frames.setdefault(m, []).append(v)
    return {m: cat_batches(v) for m, v in frames.items()}


def frames_figure(frames: Mapping[str, Tensor], rows: int, *, row_labels: Sequence[str] = (), column_labels: Sequence[str] = (),
                  title: str = "", modalities: Sequence[str] | None = None) -> Any:
    """A matplotlib Figure of decoded frames: for each image modality a block of ``rows`` rows (frames in row-major
    order, ``len(frames) / rows`` per row), blocks side by side."""
    from matplotlib.figure import Figure  # heavy: matplotlib only when a figure is drawn

    names = [m for m in (modalities or frames) if isinstance(frames[m], Tensor) and frames[m].dim() == 4]
    if not names:
        raise ValueError("no image modality among the frames")
    n = frames[names[0]].shape[0]
    if n % rows:
        raise ValueError(f"{n} frames do not fill {rows} rows")
    cols = n // rows
    fig = Figure(figsize=(min(2.0 + 0.55 * cols * len(names), 24), 0.55 * rows + 1.0), dpi=80)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, m in zip(axes, names):
        x = frames[m].reshape(rows, cols, *frames[m].shape[1:])
        grid = image_grid([x[:, j] for j in range(cols)])
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(m, fontsize=9)
        ax.set_xticks([])
        h = grid.shape[1] / rows
        ax.set_yticks([h * (i + 0.5) for i in range(rows)] if row_labels else [])
        if row_labels:
            ax.set_yticklabels(list(row_labels), fontsize=7)
        if column_labels:
            w = grid.shape[2] / cols
            ax.set_xticks([w * (j + 0.5) for j in range(cols)])
            ax.set_xticklabels(list(column_labels), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@dataclass
class NotebookRun:
    """What a traversal notebook works on: the trained model (EMA weights, eval mode), the first test examples
    (``test``, with labels), the run's sampling settings and its score prior (``None`` when none was fitted)."""

    model: MultimodalVAE
    test: dict[str, Any]
    sampling: SamplingSettings
    prior: Any
    checkpoint: Path
    specs: dict[str, Any]


def open_run(default: str, *, n_test: int = 256, env: str = "DIFFMVAE_CKPT") -> NotebookRun:
    """Load the run a notebook shows: the checkpoint in the environment variable ``env`` if set (the tests point it at
    a tiny run), else ``default`` relative to the repository root (the working directory is moved there, so the run's
    relative data paths resolve)."""

    here = Path.cwd()
    root = next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file() and (p / "diffmvae").is_dir()), here)
    ckpt = Path(os.environ.get(env) or root / default).resolve()
    os.chdir(root)
    run = load_run(ckpt)
    model = run.module.model.eval()
    prior = choose_prior("score", None, ckpt, model)[0] if default_prior_path(ckpt).is_file() else None
    test = collate_split(run.datamodule.dataset("test"), n_test)
    shown = ckpt.relative_to(root) if ckpt.is_relative_to(root) else ckpt
    return NotebookRun(model, test, run.module.sampling, prior, shown, dict(run.datamodule.specs))
