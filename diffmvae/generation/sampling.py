"""Conditional generation from any subset of modalities, and writing the results for people and programs."""

from __future__ import annotations

import io
import json
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from decoders import SamplingSettings
from decoders.threads import cuts, parts_on, run_on_threads
from diffmvae.data.batches import cat_batches, map_batch, take_rows
from diffmvae.data.spec import ModalitySpec
from diffmvae.io import DiffMVAEError, check_out_dir, image_grid, write_files
from diffmvae.model.base import LatentPrior, MultimodalModel
from diffmvae.model.composition import Composition
from diffmvae.store.prior_file import default_prior_path, load_prior


def parse_given(text: str, modalities: Sequence[str]) -> list[str]:
    """``"m0,m2"`` -> ``["m0", "m2"]``; ``"none"`` (or empty) -> ``[]``. Unknown or repeated names raise."""
    if text.strip().lower() in ("", "none"):
        return []
    names = [t.strip() for t in text.split(",")]
    for name in names:
        if name not in modalities:
            raise DiffMVAEError(f"unknown modality {name!r} in --given; this model has {', '.join(modalities)}")
    if len(set(names)) != len(names):
        raise DiffMVAEError(f"--given names a modality twice: {text!r}")
    if len(names) == len(modalities):
        raise DiffMVAEError("--given names every modality; nothing is left to generate")
    return [m for m in modalities if m in names]


def select_examples(dataset: Dataset, n: int, generator: torch.Generator) -> dict[str, Tensor]:
    """``n`` examples of ``dataset`` in a seeded random order (cycling when ``n`` exceeds its length), collated."""
    if n < 1:
        raise DiffMVAEError(f"--n must be >= 1, got {n}")
    size = len(dataset)
    order = torch.cat([torch.randperm(size, generator=generator) for _ in range(-(-n // size))])[:n]
    return default_collate([dataset[int(i)] for i in order])


def choose_prior(
    choice: str, prior_ckpt: str | None, model_ckpt: str | os.PathLike, model: MultimodalModel, *, steps: int | None = None
) -> tuple[LatentPrior, str]:
    """The prior of unconditional generation and its name: ``score`` (the checkpoint ``prior_ckpt``, else the
    one beside ``model_ckpt``), ``gaussian`` (``N(0, I)``), or ``auto`` (score when one exists). ``steps`` draws the
    score prior with that many DDIM steps (a value passed to generation; the loaded prior is not changed)."""

    if not model.has_latent:
        return None, "none (no latent)"
    path = Path(prior_ckpt) if prior_ckpt else default_prior_path(model_ckpt)
    if choice == "gaussian" or (choice == "auto" and not prior_ckpt and not path.is_file()):
        return model.prior, "gaussian"
    if not path.is_file():
        raise DiffMVAEError(f"no score prior at {path}; fit one with `diffmvae prior fit --ckpt {model_ckpt}` or pass --prior_ckpt")
    prior = load_prior(path, model, model_ckpt).to(model.device_of())
    if steps is None:
        return prior, "score"
    if steps < 1:
        raise DiffMVAEError(f"--prior_steps must be >= 1, got {steps}")
    return prior.with_steps(steps), f"score (DDIM-{steps})"


def generate_from_subset(
    model: MultimodalModel,
    batch: Mapping[str, Any],
    given: Sequence[str],
    n: int,
    *,
    generator: torch.Generator,
    sampling: SamplingSettings = SamplingSettings(),
    prior: LatentPrior | None = None,
    chunk_size: int = 256,
    progress: bool = True,
    composition: Composition | None = None,
    thread_split: int = 1,
) -> dict[str, Tensor]:
    """Generate every modality not in ``given`` for ``n`` examples, ``chunk_size`` at a time (composing predictions
    from several sources of ``given`` when a ``composition`` is passed).

    Observed modalities are returned as the real inputs; with ``given`` empty, every modality is decoded from
    ``z ~ prior`` (the model's ``N(0, I)`` by default). Returns CPU tensors, one per modality.

    ``thread_split > 1`` (on a CPU; ignored elsewhere) cuts each chunk into that many parts, each generated on its
    own thread with its own generator seeded from ``generator`` (:mod:`decoders.threads`): the same distribution,
    faster on a CPU with few cores, deterministic given the seed, but not the same draws as unsplit.
    """
    if thread_split < 1:
        raise DiffMVAEError(f"thread_split must be >= 1, got {thread_split}")
    device = model.device_of()
    split = parts_on(device, thread_split)
    extra = {"composition": composition} if composition is not None and given else {}
    # (composition only when asked for: a user's model written to the interface before it had the argument still works)

    def part(rows: tuple[int, int], g: torch.Generator) -> dict[str, Any]:
        obs = {m: take_rows(batch[m], rows[0], rows[1], device) for m in given}
        return model.generate(obs or None, rows[1] - rows[0], sampling=sampling, generator=g, prior=prior, **extra)

    chunks: list[dict[str, Tensor]] = []
    for start in tqdm(range(0, n, chunk_size), desc="sampling", disable=not progress, leave=False):
        stop = min(start + chunk_size, n)
        with torch.inference_mode():
            if split > 1:
                parts = run_on_threads(part, [(start + a, start + b) for a, b in cuts(stop - start, split)], generator)
                out = {m: cat_batches([p[m] for p in parts]) for m in parts[0]}
            else:
                out = part((start, stop), generator)
        # float32 under autocast too
        chunks.append({m: map_batch(v, lambda t: t.float().cpu() if t.is_floating_point() else t.cpu()) for m, v in out.items()})
    return {m: cat_batches([c[m] for c in chunks]) for m in model.modalities}


def grid_figure(samples: Mapping[str, Tensor], specs: Mapping[str, ModalitySpec], given: Sequence[str], rows: int = 16, *,
                title: str = "", texts: Mapping[str, Sequence[str]] | None = None) -> bytes:
    """A PNG (bytes) of the first ``rows`` examples, one column per image modality, observed ones marked; each text
    modality's strings (``texts``) are written beside its row."""
    from matplotlib.figure import Figure  # heavy: matplotlib only when a figure is drawn

    texts = dict(texts or {})
    images = [m for m in samples if m in specs and specs[m].is_image]
    if not images:
        raise DiffMVAEError("no image modality to draw")
    rows = min(rows, samples[images[0]].shape[0])
    grid = image_grid([samples[m][:rows] for m in images])
    width_in = 1.1 * len(images) + 0.6 + (3.2 * len(texts) if texts else 0)
    fig = Figure(figsize=(width_in, 1.1 * rows / 1.6 + 0.8), dpi=110)
    ax = fig.subplots()
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    width = grid.shape[2] / len(images)
    ax.set_xticks([width * (j + 0.5) for j in range(len(images))])
    ax.set_xticklabels([f"{m}\n(given)" if m in given else textwrap.fill(m.replace("_", " "), 10) for m in images], fontsize=7)
    ax.set_yticks([])
    height = grid.shape[1] / rows
    for j, (m, strings) in enumerate(texts.items()):
        ax.text(grid.shape[2] + 4 + j * 150, -2, f"{m} (given)" if m in given else m, fontsize=7, va="bottom", weight="bold")
        for i, line in enumerate(strings[:rows]):
            ax.text(grid.shape[2] + 4 + j * 150, height * (i + 0.5), line, fontsize=6, va="center", clip_on=False)
    ax.set_title(title, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def grid_title(given: Sequence[str], prior: str | None, record: Mapping[str, Any]) -> str:
    head = "given: " + (", ".join(given) if given else f"none ({prior or 'gaussian'} prior)")
    described = record.get("decoders") or {}
    if described:
        first = next(iter(described.values()))
        how = f"{first['sampler']}-{first['steps']}" + (f", guidance {first['guidance']:g}" if first["guidance"] != 1 else "")
        how += "" if first["exact"] else f", refined from the mean at start {first['start']:g}"
        head += f"\n{how}"
    return head


def write_samples(
    out: str | os.PathLike, samples: Mapping[str, Tensor], specs: Mapping[str, ModalitySpec], given: Sequence[str], labels: Tensor | None, *,
    prior: str | None = None, sampling: Mapping[str, Any] | None = None, texts: Mapping[str, Sequence[str]] | None = None,
) -> list[Path]:
    """Write ``grid.png`` and ``samples.npz`` into ``out``. Both are written to a temporary folder first and renamed
    into place one by one, so an existing folder never holds a half-written file. ``prior`` (the prior of
    unconditional samples) and ``sampling`` (the settings and what each diffusion decoder did with them) are stored
    in the npz (``sampling`` as a JSON string) and shown in the grid's title. A text modality is stored as its
    strings (``texts[m]``, the key ``m``) and its token ids and mask (``m/input_ids``, ``m/attention_mask``)."""
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for m, v in samples.items():
        if isinstance(v, Mapping):
            arrays.update({f"{m}/{k}": t.numpy().astype(np.int64) for k, t in v.items()})
            if texts and m in texts:
                arrays[m] = np.array(list(texts[m]), dtype=str)
        else:
            arrays[m] = v.numpy().astype(np.float32 if v.is_floating_point() else np.int64)
    if labels is not None:
        arrays["label"] = labels.numpy().astype(np.int64)
    arrays["given"] = np.array(list(given), dtype=str)
    if prior is not None:
        arrays["prior"] = np.array(prior)
    record = dict(sampling or {})
    arrays["sampling"] = np.array(json.dumps(record))
    grid = grid_figure(samples, specs, given, title=grid_title(given, prior, record), texts=texts)
    return write_files(out, {"grid.png": lambda path: path.write_bytes(grid), "samples.npz": lambda path: np.savez(path, **arrays)})


def sampling_record(model: MultimodalModel, sampling: SamplingSettings, composition: Composition | None = None) -> dict[str, Any]:
    """What ``samples.npz`` and evaluation outputs record of the sampling: the settings, per diffusion-decoded
    modality the sampler and settings its decoder resolved them to, and the composition (``None``: one PoE latent)."""
    return {"settings": sampling.record(), "decoders": model.describe_sampling(sampling),
            "composition": composition.record() if composition is not None else None}
