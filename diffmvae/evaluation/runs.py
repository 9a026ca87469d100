"""What ``diffmvae evaluate`` and ``diffmvae classifiers fit`` do, callable from Python."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from diffmvae.data.batches import collate_split
from diffmvae.devices import precision as autocast
from diffmvae.evaluation.classifier import (
    AttributeJudge,
    ParserJudge,
    ValueJudge,
    fit_classifier_set,
    load_classifier_set,
    save_classifier_set,
)
from diffmvae.evaluation.frechet import InceptionExtractor, PixelPCA, pixel_pcas
from diffmvae.evaluation.report import write_report
from diffmvae.evaluation.suite import EvalSettings, evaluate_model
from diffmvae.generation.sampling import choose_prior, sampling_record
from diffmvae.io import DiffMVAEError, check_out_dir, check_writable, refuse_existing
from diffmvae.model.composition import Composition
from diffmvae.store.build import build_data, trusted_of
from diffmvae.store.load import LoadedRun, load_run

log = logging.getLogger(__name__)

CLASSIFIER_DIR = Path("runs/classifiers")


def judged_data(data_config: dict[str, Any]) -> dict[str, Any]:
    """The data a classifier set is trained on: ``data_config`` with every modality (a ``keep`` list of PolyDigits
    dropped, since each modality's images are the same with or without the others), so that models trained on subsets
    of modalities (Wesego & Rooshenas 2024 Fig. 7, Unite-and-Conquer) are judged by the same classifiers as the full model."""
    init = {k: v for k, v in (data_config.get("init_args") or {}).items() if k != "keep"}
    return {**data_config, "init_args": init}


def data_key(data_config: dict[str, Any], trusted: Sequence[str] = ()) -> str:
    """A file-name key for the real data a classifier set is trained on: the data module's class, recipe version and
    every data setting, defaults included (:meth:`~diffmvae.data.MultimodalDataModule.cache_key`), of
    :func:`judged_data`."""
    key = build_data(judged_data(data_config), "the data config", trusted).cache_key()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{key['class']}{'-v' + str(key['version']) if key['version'] is not None else ''}-{digest}"


def fit_classifiers(data_config: dict[str, Any], out: str | Path | None = None, *, overwrite: bool = False, progress: bool = True,
                    trusted: Sequence[str] = (), **settings: Any) -> Path:
    """Train and save one classifier per image modality of the data described by ``data_config`` (a data module
    outside the library is built only when its class path is in ``trusted``)."""
    path = Path(out) if out else CLASSIFIER_DIR / f"{data_key(data_config, trusted)}.pt"
    refuse_existing(path, overwrite)
    check_writable(path.parent, "the classifiers' folder")
    classifiers, accuracy = fit_classifier_set(build_data(judged_data(data_config), "the data config", trusted), progress=progress, **settings)
    return save_classifier_set(path, classifiers, accuracy, judged_data(data_config))


def classifiers_for_run(run: LoadedRun, path: str | Path | None, progress: bool = True) -> tuple[dict, dict[str, float], Path]:
    """The classifier set at ``path``, or the cached one for the run's data (trained and saved when missing)."""
    if path is None:
        trusted = trusted_of(run.config, "the run's config")
        path = CLASSIFIER_DIR / f"{data_key(run.config['data'], trusted)}.pt"
        if not Path(path).is_file():
            log.info("no classifiers for this data yet: training them on its train split (saved to %s)", path)
            fit_classifiers(run.config["data"], path, progress=progress, trusted=trusted)
    classifiers, accuracy, _ = load_classifier_set(path)
    specs = run.datamodule.specs
    missing = [m for m in run.module.model.modalities if specs[m].judge == "classifier" and m not in classifiers]
    if missing:
        raise DiffMVAEError(f"classifier file {path} has no classifier for modality {missing[0]!r}")
    classifiers.update({m: AttributeJudge() if spec.kind == "attributes" else ValueJudge(spec.num_classes) for m, spec in specs.items()
                        if spec.judge == "value" and m in run.module.model.modalities})
    # Captions a rule can read (PolyDigits': the digit they name) get a second judge, reported as "<m>@parser".
    if hasattr(run.datamodule, "parse_label"):
        classifiers.update({f"{m}@parser": ParserJudge(lambda ids, m=m: run.datamodule.decode_text(m, ids), run.datamodule.parse_label)
                            for m, spec in specs.items() if spec.is_text and m in run.module.model.modalities})
    return classifiers, accuracy, Path(path)


def label_free_features(run: LoadedRun, names: Sequence[str], settings: EvalSettings = EvalSettings()) -> dict[str, PixelPCA]:
    """The pixel PCA of each image modality in ``names``, fitted on the run's real training images as ``diffmvae
    evaluate`` fits it (``settings.pca_components`` axes of ``settings.pca_train`` images): the feature space of the
    label-free Fréchet distance the experiment scripts report beside the classifier one."""
    train = collate_split(run.datamodule.dataset("train"), settings.pca_train)
    return pixel_pcas(train, [m for m in names if run.datamodule.specs[m].is_image], settings.pca_train, settings.pca_components)


def evaluate_checkpoints(
    ckpts: Sequence[str | Path],
    out: str | Path,
    *,
    settings: EvalSettings = EvalSettings(),
    names: Sequence[str] | None = None,
    classifiers: str | Path | None = None,
    prior: str = "auto",
    sampling: dict[str, Any] | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
    precision: str = "32-true",
    composition: Composition | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Evaluate every checkpoint with one classifier set and write ``metrics.{json,csv,md,png}`` into ``out``; with a
    ``composition``, conditional generation composes its sources (Unite-and-Conquer within each model). An ``out``
    that holds files is refused unless ``overwrite`` (``diffmvae evaluate`` passes its ``--overwrite``)."""

    if not ckpts:
        raise DiffMVAEError("give at least one --ckpt")
    names = list(names) if names else _default_names(ckpts)
    if len(names) != len(ckpts) or len(set(names)) != len(names):
        raise DiffMVAEError(f"--names needs {len(ckpts)} distinct names, got {names}")
    check_out_dir(out, overwrite=overwrite)
    runs = [load_run(c, device=device) for c in ckpts]
    first = runs[0].module.model.modalities
    for ckpt, run in zip(ckpts, runs):
        if run.module.model.modalities != first:
            raise DiffMVAEError(f"checkpoints have different modality sets: {ckpts[0]} has {', '.join(first)}; {ckpt} has {', '.join(run.module.model.modalities)}")
    samplings = []
    for run in runs:  # fail on missing data files or a bad sampler now, not after minutes of classifier training
        run.datamodule.dataset("test")
        samplings.append(run.module.sampling.replace(**(sampling or {})))
        run.module.model.check_sampling(samplings[-1])
        if composition is not None:
            run.module.model.check_composition(composition, run.module.model.modalities[:1], samplings[-1])
    if settings.inception_weights:

        InceptionExtractor(settings.inception_weights)  # fail now on a missing file or the missing extra
    clfs, accuracy, clf_path = classifiers_for_run(runs[0], classifiers, progress)
    summaries, rows = [], []
    for name, ckpt, run, run_sampling in zip(names, ckpts, runs, samplings):
        model = run.module.model
        prior_module, prior_name = choose_prior(prior, None, ckpt, model)
        log.info("evaluating %s (%s prior for unconditional samples)", name, prior_name)
        with autocast(precision, torch.device(device)):
            summary, model_rows = evaluate_model(name, model, run.datamodule, clfs, prior_module, prior_name, settings, sampling=run_sampling,
                                                 progress=progress, composition=composition)
        summary.update({"checkpoint": str(ckpt), "classifiers": str(clf_path), "classifier_accuracy": accuracy,
                        "sampling": sampling_record(model, run_sampling, composition)})
        summaries.append(summary)
        rows += model_rows
        log.info("%s: coherence %s, unconditional %s; FD %s (%.0fs)", name,
                 {k: round(v, 3) for k, v in summary["coherence"]["conditional"].items()}, summary["coherence"]["unconditional"],
                 {k: round(v, 1) for k, v in summary["fd"]["conditional"].items()}, summary["seconds"])
    return write_report(out, summaries, rows)


def _default_names(ckpts: Sequence[str | Path]) -> list[str]:
    """Run directory names (``runs/<name>/checkpoints/last.ckpt`` -> ``<name>``, else the file stem), numbered
    where two would clash."""
    names = [Path(c).parent.parent.name if Path(c).parent.name == "checkpoints" else Path(c).stem for c in ckpts]
    if len(set(names)) < len(names):
        names = [f"{n}-{i + 1}" for i, n in enumerate(names)]
    return names
