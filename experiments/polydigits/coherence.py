"""Judge `diffmvae sample` output with the digit classifiers of `diffmvae evaluate` (trained on real images):
coherence of the generated modalities and their Fréchet distance to the real test images.

    python experiments/polydigits/coherence.py --samples OUT/samples.npz [--classifiers runs/classifiers/....pt]

Prints the fraction of generated images (the modalities not in `given`) classified as the example's true
label (and, for generated captions, the fraction naming the true digit, read by the caption parser) or, for samples
drawn from the prior (`--given none`), the fraction of joint samples whose modalities are all read as the same digit
(`agreement` adds "at least k agree"), and the Fréchet distance of each generated modality to all real test images of that modality in both feature spaces of
`diffmvae evaluate`: the classifier's penultimate-layer features (`fd`) and, label-free, 64 principal components of
the pixels of 2000 real training images (`fd_pca`). Without --classifiers it uses (and trains once, when missing) the classifier set of the quickstart's
data: PolyDigits with M taken from the samples, seed 0, 6000 training examples.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path

import numpy as np
import torch

from diffmvae.data import PolyDigits
from diffmvae.data.batches import collate_split
from diffmvae.data.captions import parse_digit
from diffmvae.evaluation import FeatureExtractor, conditional_coherence, frechet_distance, unconditional_coherence
from diffmvae.evaluation.classifier import load_classifier_set
from diffmvae.evaluation.frechet import pixel_pcas
from diffmvae.evaluation.runs import CLASSIFIER_DIR, data_key, fit_classifiers
from diffmvae.evaluation.suite import EvalSettings


@functools.lru_cache(maxsize=2)
def references(classifiers_path: str, num_modalities: int) -> tuple:
    """The judges, their accuracy, the real test images and the label-free PCA of `diffmvae evaluate` (its defaults:
    the pixels of real training images), loaded once per classifier file and ``M`` (a report judges several files)."""
    classifiers, accuracy, _ = load_classifier_set(classifiers_path)
    real = collate_split(PolyDigits("test", num_modalities, seed=0))
    settings = EvalSettings()
    train = collate_split(PolyDigits("train", num_modalities, seed=0, length=6000), settings.pca_train)
    names = [f"m{k}" for k in range(num_modalities)]
    return classifiers, accuracy, real, pixel_pcas(train, names, settings.pca_train, settings.pca_components)


def judge(samples_path: str | Path, classifiers_path: str | Path | None = None) -> dict:
    """Coherence and both Fréchet distances of one ``samples.npz``: conditional coherence (the generated modalities
    read as the example's label) when it was sampled given modalities, unconditional coherence (every modality read
    as the same digit) when it was sampled from the prior."""
    data = np.load(samples_path)
    given = [str(g) for g in data["given"]]
    names = sorted((k for k in data.files if re.fullmatch(r"m\d+", k)), key=lambda k: int(k[1:]))
    texts = [k for k in data.files if "/" not in k and data[k].dtype.kind == "U" and data[k].ndim == 1 and k not in ("given",)]
    path = Path(classifiers_path) if classifiers_path else None
    if path is None:
        config = {"class_path": "diffmvae.data.PolyDigitsDataModule", "init_args": {"num_modalities": len(names), "seed": 0, "train_length": 6000}}
        path = CLASSIFIER_DIR / f"{data_key(config)}.pt"
        if not path.is_file():
            fit_classifiers(config, path)
    classifiers, accuracy, real, pcas = references(str(path), len(names))
    samples = {m: torch.from_numpy(data[m]) for m in names}
    out: dict = {"given": given, "n": len(data[names[0]])}
    if given:
        scores = conditional_coherence(samples, torch.from_numpy(data["label"]), given, classifiers)
        labels = data["label"].tolist()
        out.update(per_modality=scores, coherence=round(float(np.mean(list(scores.values()))), 4),
                   caption_coherence_parser={m: float(np.mean([parse_digit(str(t)) == y for t, y in zip(data[m], labels)]))
                                             for m in texts if m not in given})
        judged = list(scores)
    else:
        agree = unconditional_coherence(samples, classifiers)
        out.update(coherence=round(agree["all"], 4), agreement={k: round(v, 4) for k, v in agree.items()})
        judged = names
    fd = {m: frechet_distance(real[m], samples[m], FeatureExtractor(classifiers[m])) for m in judged}
    fd_pca = {m: frechet_distance(real[m], samples[m], pcas[m]) for m in judged}
    out.update(fd_mean=round(float(np.mean(list(fd.values()))), 2), fd={m: round(v, 2) for m, v in fd.items()},
               fd_pca_mean=round(float(np.mean(list(fd_pca.values()))), 3), fd_pca={m: round(v, 3) for m, v in fd_pca.items()},
               classifier_accuracy=accuracy)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", required=True, help="samples.npz written by `diffmvae sample`")
    p.add_argument("--classifiers", default=None, help="classifier file written by `diffmvae classifiers fit`")
    args = p.parse_args()
    print(json.dumps(judge(args.samples, args.classifiers)))


if __name__ == "__main__":
    main()
