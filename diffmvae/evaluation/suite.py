"""The evaluation protocol (Wesego & Rooshenas 2024, following MoPoE) for one trained model: conditional coherence and Fréchet distance per
number of observed modalities, unconditional coherence and Fréchet distance, latent linear probes per subset
size, and the test ELBO.

Subsets: for each ``k`` in ``1..M-1`` every subset of size ``k`` is used, unless there are more than
``max_subsets``; then a random sample of ``max_subsets`` of them (seeded by ``seed``) stands for that ``k``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn
from tqdm.auto import tqdm

from decoders import SamplingSettings
from diffmvae.data.batches import collate_split, num_rows, take_rows
from diffmvae.evaluation.classifier import predict
from diffmvae.evaluation.coherence import unconditional_coherence
from diffmvae.evaluation.frechet import FeatureExtractor, InceptionExtractor, frechet_distance, pixel_pcas
from diffmvae.evaluation.match import f1_samples, match_rows
from diffmvae.generation.sampling import generate_from_subset
from diffmvae.io import DiffMVAEError
from diffmvae.model.base import LatentPrior, MultimodalModel
from diffmvae.model.composition import Composition
from diffmvae.model.vae import MultimodalVAE

log = logging.getLogger(__name__)

PARTS = ("conditional", "unconditional", "probes", "elbo")


@dataclass(frozen=True)
class EvalSettings:
    """How much to evaluate: test examples (``None``: the whole split), subsets per size, probe training size, and the
    label-free feature space of the second Fréchet distance (``pca_components`` principal axes of ``pca_train`` real
    training images per image modality; 0 components: none)."""

    n_samples: int | None = None
    seed: int = 0
    max_subsets: int = 10
    probe_train: int = 2000
    label_key: str = "label"
    inception_weights: str | None = None
    parts: tuple[str, ...] = PARTS
    pca_components: int = 64
    pca_train: int = 2000
    thread_split: int = 1  # on a CPU: each sampling batch as parts on threads (other draws, the same distribution)

    def __post_init__(self) -> None:
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown or not self.parts:
            raise DiffMVAEError(f"--parts must name some of {', '.join(PARTS)}, got {unknown[0] if unknown else 'none'!r}")
        if self.n_samples is not None and self.n_samples < 1:
            raise DiffMVAEError(f"--n_samples must be >= 1, got {self.n_samples}")
        if self.pca_components < 0 or self.pca_train < 2:
            raise DiffMVAEError(f"--pca_components must be >= 0 and --pca_train >= 2, got {self.pca_components}, {self.pca_train}")
        if self.thread_split < 1:
            raise DiffMVAEError(f"--thread_split must be >= 1, got {self.thread_split}")
        if self.max_subsets < 1 or self.probe_train < 2:
            raise DiffMVAEError(f"--max_subsets must be >= 1 and --probe_train >= 2, got {self.max_subsets}, {self.probe_train}")


def subsets_by_size(modalities: Sequence[str], max_subsets: int, seed: int) -> dict[int, list[tuple[str, ...]]]:
    """``{k: subsets of size k}`` for ``k = 1..M-1``, each list capped at ``max_subsets`` by a seeded sample."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(1, len(modalities)):
        subsets = list(itertools.combinations(modalities, k))
        if len(subsets) > max_subsets:
            keep = sorted(rng.choice(len(subsets), size=max_subsets, replace=False))
            subsets = [subsets[i] for i in keep]
        out[k] = subsets
    return out


def conditional_metrics(
    model: MultimodalModel,
    test: Mapping[str, Tensor],
    labels: Tensor,
    subsets: Mapping[int, list[tuple[str, ...]]],
    classifiers: Mapping[str, nn.Module],
    extractors: Mapping[str, nn.Module],
    *,
    seed: int,
    sampling: SamplingSettings = SamplingSettings(),
    progress: bool = True,
    composition: Composition | None = None,
    matched: Sequence[str] = (),
    label_free: Mapping[str, nn.Module] | None = None,
    thread_split: int = 1,
) -> list[dict[str, Any]]:
    """Rows ``{metric, k, target, value}`` of conditional coherence and FD (``fd`` in ``extractors``' features,
    ``fd_pca`` in ``label_free`` ones, e.g. :class:`~diffmvae.evaluation.frechet.PixelPCA`), per target and
    averaged (``mean``); with
    attribute labels also ``f1`` (per-example F1 of the judged attributes); for the ``matched`` modalities (binary
    masks) ``mask_f1`` / ``mask_iou`` against the example's own. With a ``composition``, the diffusion-decoded targets
    compose its sources of each subset."""
    n = labels.shape[0]
    rows: list[dict[str, Any]] = []
    todo = [(k, s) for k, ss in subsets.items() for s in ss if model.can_generate(s)]
    pools: dict[tuple[int, str], list[Tensor]] = {}
    scores: dict[tuple[str, int, str], list[float]] = {}
    for i, (k, subset) in enumerate(tqdm(todo, desc="conditional generation", disable=not progress, leave=False)):
        generator = torch.Generator().manual_seed(seed * 7919 + i)
        samples = generate_from_subset(model, test, subset, n, generator=generator, sampling=sampling, progress=False,
                                       composition=composition, thread_split=thread_split)
        for target in model.modalities:
            if target in subset:
                continue
            for judge in judges_of(target, classifiers):  # the modality's classifier, and e.g. "text@parser"
                predicted = predict(classifiers[judge], samples[target])
                scores.setdefault(("coherence", k, judge), []).append((predicted == labels).float().mean().item())
                if classifiers[judge].multilabel:
                    scores.setdefault(("f1", k, judge), []).append(f1_samples(labels, predicted))
            if target in matched:
                for row in match_rows(k, target, test[target], samples[target]):
                    scores.setdefault((row["metric"], k, target), []).append(row["value"])
            if target in extractors or target in (label_free or {}):
                pools.setdefault((k, target), []).append(samples[target])
    for k in subsets:
        per_metric: dict[str, dict[str, float]] = {"coherence": {}}
        for metric, space in (("fd", extractors), ("fd_pca", label_free or {})):
            values = {t: frechet_distance(test[t], torch.cat(pools[(k, t)]), space[t]) for t in model.modalities if (k, t) in pools and t in space}
            if values:
                per_metric[metric] = values
        for (metric, kk, target), values in scores.items():
            if kk == k:
                per_metric.setdefault(metric, {})[target] = float(np.mean(values))
        for metric, values in per_metric.items():
            rows += [{"metric": metric, "k": k, "target": t, "value": v} for t, v in values.items()]
            main = [v for t, v in values.items() if "@" not in t]  # second judges of a modality stay out of the mean
            if main:
                rows.append({"metric": metric, "k": k, "target": "mean", "value": float(np.mean(main))})
    return rows


def judges_of(target: str, classifiers: Mapping[str, nn.Module]) -> list[str]:
    """The judges of a modality: its classifier (keyed by its name) and any second judge keyed ``<name>@<judge>``."""
    return [j for j in classifiers if j == target or j.startswith(f"{target}@")]


def unconditional_metrics(
    model: MultimodalModel,
    test: Mapping[str, Tensor],
    prior: LatentPrior,
    n: int,
    classifiers: Mapping[str, nn.Module],
    extractors: Mapping[str, nn.Module],
    *,
    seed: int,
    sampling: SamplingSettings = SamplingSettings(),
    label_free: Mapping[str, nn.Module] | None = None,
    thread_split: int = 1,
) -> list[dict[str, Any]]:
    """Rows of unconditional coherence (``all`` and ``at_least_k`` agree) and FD per modality and mean (``fd_unconditional``
    in ``extractors``' features, ``fd_pca_unconditional`` in ``label_free`` ones)."""
    generator = torch.Generator().manual_seed(seed + 104729)
    samples = generate_from_subset(model, {}, [], n, generator=generator, sampling=sampling, prior=prior, progress=False,
                                   thread_split=thread_split)
    judged = [m for m in samples if m in classifiers]
    rows = [] if len(judged) < 2 else [{"metric": "coherence_unconditional", "k": 0, "target": key, "value": v}
                                       for key, v in unconditional_coherence(samples, classifiers).items()]
    for metric, space in (("fd_unconditional", extractors), ("fd_pca_unconditional", label_free or {})):
        fd = {m: frechet_distance(test[m], samples[m], space[m]) for m in model.modalities if m in space}
        rows += [{"metric": metric, "k": 0, "target": m, "value": v} for m, v in fd.items()]
        if fd:
            rows.append({"metric": metric, "k": 0, "target": "mean", "value": float(np.mean(list(fd.values())))})
    return rows


def latent_means(model: MultimodalVAE, data: Mapping[str, Tensor], subset: Sequence[str], batch_size: int = 512) -> np.ndarray:
    """Posterior means ``[N, d]`` of ``q(z|x_subset)``."""
    device = model.device_of()
    n = num_rows(next(iter(data.values())))
    with torch.no_grad():
        mus = [model.posterior({m: take_rows(data[m], i, i + batch_size, device) for m in subset})[0].cpu() for i in range(0, n, batch_size)]
    return torch.cat(mus).numpy()


def probe_accuracy(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of a scikit-learn logistic regression fitted on ``(z_train, y_train)``."""
    return float(LogisticRegression(max_iter=2000).fit(z_train, y_train).score(z_test, y_test))


def latent_probe_rows(
    model: MultimodalVAE, train: Mapping[str, Tensor], test: Mapping[str, Tensor], label_key: str, subsets: Mapping[int, list[tuple[str, ...]]], progress: bool = True
) -> list[dict[str, Any]]:
    """Test accuracy of a logistic regression on posterior means, per subset size (the full set as ``k = M``)."""
    every = {**subsets, len(model.modalities): [tuple(model.modalities)]}
    rows = []
    for k, ss in tqdm(every.items(), desc="latent probes", disable=not progress, leave=False):
        accs = [
            probe_accuracy(latent_means(model, train, s), train[label_key].numpy(), latent_means(model, test, s), test[label_key].numpy())
            for s in ss
        ]
        rows.append({"metric": "latent_probe", "k": k, "target": "mean", "value": float(np.mean(accs))})
    return rows


def elbo_on_split(model: MultimodalModel, test: Mapping[str, Tensor], *, seed: int, batch_size: int = 256) -> dict[str, float]:
    """Mean test objective (every term, all weights 1, nats per example) and each term: ``objective``, ``kl``,
    ``<m>/<kind>``; plus ``elbo`` (minus the sum of the KL and the terms that bound ``-log p(x_m|z)``) when every
    decoder gives a bound (feed-forward likelihoods, VDM; DDPM and score-matching losses are surrogates)."""
    device = model.device_of()
    generator = torch.Generator(device=device).manual_seed(seed)
    n = num_rows(next(iter(test.values())))
    bounds = model.bound_terms()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for i in range(0, n, batch_size):
            record = model.elbo({m: take_rows(test[m], i, i + batch_size, device) for m in model.modalities}, generator=generator)
            terms = {"objective": record.loss(1.0), **record.terms}
            if bounds is not None:
                terms["elbo"] = -record.total(["kl", *(t for t in record.terms if t.partition("/")[2] in bounds.get(t.partition("/")[0], ()))])
            for key, v in terms.items():
                sums[key] = sums.get(key, 0.0) + v.sum().item()
    return {key: v / n for key, v in sums.items()}


def bits_per_dim(model: MultimodalVAE, test: Mapping[str, Tensor], *, seed: int, batch_size: int = 256) -> dict[str, float]:
    """``{modality: bits/dim}`` for every decoder that bounds a discrete likelihood (``Decoder.bits_per_dim``, VDM
    decoders), with ``z ~ q(z|X)`` of all modalities (models with a latent only)."""
    if not model.has_latent:
        return {}
    device = model.device_of()
    generator = torch.Generator(device=device).manual_seed(seed)
    n = num_rows(next(iter(test.values())))
    sums: dict[str, float] = {}
    with torch.no_grad():
        for i in range(0, n, batch_size):
            x = {m: take_rows(test[m], i, i + batch_size, device) for m in model.modalities}
            z = model.sample_latent(x, generator=generator)
            example = model.observe(x)
            for dec in model.decoders.values():
                for m, bpd in dec.bits_per_dim(z, example, generator=generator).items():
                    sums[m] = sums.get(m, 0.0) + bpd.sum().item()
    return {m: v / n for m, v in sums.items()}


def text_nll_per_token(model: MultimodalVAE, test: Mapping[str, Any], *, seed: int, batch_size: int = 256,
                       given: Sequence[str] | None = None) -> dict[str, float]:
    """``{text modality: nats per token}``: ``-log p(text | z)`` of the text decoders (:class:`~decoders.text.TextDecoder`)
    summed over the test set's predicted tokens (``[EOS]`` included), over their number, ``z ~ q(z | X)`` (or
    ``q(z | x_given)``: the text's likelihood given other modalities only)."""
    texts = [(m, dec) for dec in model.decoders.values() if dec.is_text for m in dec.modalities]
    if not texts or not model.has_latent:
        return {}
    device = model.device_of()
    generator = torch.Generator(device=device).manual_seed(seed)
    n = num_rows(next(iter(test.values())))
    nats = {m: 0.0 for m, _ in texts}
    tokens = {m: 0.0 for m, _ in texts}
    with torch.no_grad():
        for i in range(0, n, batch_size):
            x = {m: take_rows(test[m], i, i + batch_size, device) for m in model.modalities}
            z = model.sample_latent({m: v for m, v in x.items() if given is None or m in given}, generator=generator)
            for m, dec in texts:
                nats[m] += dec.nll(z, x[m]).sum().item()
                tokens[m] += x[m]["attention_mask"][:, 1:].sum().item()
    return {m: nats[m] / max(tokens[m], 1.0) for m in nats}


def evaluate_model(
    name: str,
    model: MultimodalVAE,
    datamodule: Any,
    classifiers: Mapping[str, nn.Module],
    prior: LatentPrior,
    prior_name: str,
    settings: EvalSettings = EvalSettings(),
    *,
    sampling: SamplingSettings = SamplingSettings(),
    progress: bool = True,
    composition: Composition | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every metric of the protocol for one model: ``(summary in the metrics.json layout, table rows)``."""
    start = time.perf_counter()
    test = collate_split(datamodule.dataset("test"), settings.n_samples)
    label_key = getattr(datamodule, "label_key", settings.label_key)
    if label_key not in test:
        raise DiffMVAEError(f"the test data has no {label_key!r} field; coherence needs labels")
    labels = test[label_key]
    specs = getattr(datamodule, "specs", {})
    matched = [m for m in model.modalities if m in specs and specs[m].judge == "match"]
    test = {m: test[m] for m in model.modalities}
    n = labels.shape[0]
    if settings.inception_weights:
        inception = InceptionExtractor(settings.inception_weights)
        extractors: dict[str, nn.Module] = {m: inception for m, c in classifiers.items() if c.has_features}
    else:
        extractors = {m: FeatureExtractor(c) for m, c in classifiers.items() if c.has_features}
    subsets = subsets_by_size(model.modalities, settings.max_subsets, settings.seed)
    parts = settings.parts
    pca = bool({"conditional", "unconditional"} & set(parts)) and settings.pca_components > 0
    probes = "probes" in parts and model.has_latent and labels.dim() == 1  # linear probes on posterior means (class labels)
    limit = max(settings.pca_train if pca else 0, settings.probe_train if probes else 0)
    train = collate_split(datamodule.dataset("train"), limit) if limit else {}  # one pass serves the PCA and the probes
    label_free: dict[str, nn.Module] = {}
    if pca:
        label_free = pixel_pcas(train, [m for m in model.modalities if m in specs and specs[m].is_image and m in train],
                                settings.pca_train, settings.pca_components)
    rows = []
    if "conditional" in parts:
        rows += conditional_metrics(model, test, labels, subsets, classifiers, extractors, seed=settings.seed, sampling=sampling, progress=progress,
                                    composition=composition, matched=matched, label_free=label_free, thread_split=settings.thread_split)
    if "unconditional" in parts and model.can_generate(()):
        rows += unconditional_metrics(model, test, prior, n, classifiers, extractors, seed=settings.seed, sampling=sampling,
                                      label_free=label_free, thread_split=settings.thread_split)
    if probes:
        probe_train = {k: take_rows(v, 0, settings.probe_train) for k, v in train.items()}
        rows += latent_probe_rows(model, probe_train, {**test, label_key: labels}, label_key, subsets, progress)
    elbo = elbo_on_split(model, test, seed=settings.seed) if "elbo" in parts else {}
    rows += [{"metric": key if key in ("elbo", "objective") else f"term/{key}", "k": len(model.modalities), "target": "all", "value": v}
             for key, v in elbo.items()]
    for row in rows:
        row["model"] = name

    def pick(metric: str) -> dict[str, float]:
        return {str(r["k"]): r["value"] for r in rows if r["metric"] == metric and r["target"] == "mean"}

    uncond = {r["target"]: r["value"] for r in rows if r["metric"] == "coherence_unconditional"}
    summary = {
        "model": name,
        "coherence": {"conditional": pick("coherence"), "unconditional": uncond.get("all"),
                      "unconditional_at_least": {k: v for k, v in uncond.items() if k != "all"}},
        "fd": {"conditional": pick("fd"), "unconditional": pick("fd_unconditional").get("0")},
        "fd_pca": {"conditional": pick("fd_pca"), "unconditional": pick("fd_pca_unconditional").get("0")} if label_free else None,
        "latent_probe": pick("latent_probe"),
        "f1": pick("f1") or None,
        "mask": {"f1": pick("mask_f1"), "iou": pick("mask_iou")} if matched else None,
        "elbo": elbo.get("elbo"),
        "objective": elbo.get("objective"),
        "terms": {k: v for k, v in elbo.items() if k not in ("elbo", "objective")},
        "bits_per_dim": (bits_per_dim(model, test, seed=settings.seed) or None) if "elbo" in parts else None,
        "text_nll_per_token": (text_nll_per_token(model, test, seed=settings.seed) or None) if "elbo" in parts else None,
        "fd_features": "inception" if settings.inception_weights else "classifier",
        "fd_pca_features": (f"PCA of pixels, {settings.pca_components} components fitted on {settings.pca_train} real training images"
                            if label_free else None),
        "n_samples": n,
        "seed": settings.seed,
        "prior": prior_name,
        "subsets": {str(k): ["+".join(s) for s in ss] for k, ss in subsets.items()},
        "settings": asdict(settings),
        "seconds": time.perf_counter() - start,
    }
    return summary, rows
