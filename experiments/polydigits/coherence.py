"""Judge `diffmvae sample` output with digit classifiers trained on real PolyDigits images.

    python experiments/polydigits/coherence.py --samples OUT/samples.npz [--classifiers runs/classifiers_polydigits-v2_M5.pt]

Trains one classifier per modality on the train split (cached), reports its accuracy on the test split, then
the fraction of generated images (the modalities not in `given`) classified as the example's true label.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffmvae.data import PolyDigits
from diffmvae.data.polydigits import VERSION
from diffmvae.evaluation import ImageClassifier, conditional_coherence, fit_classifier, predict
from diffmvae.io import atomic_write


def stack(ds: PolyDigits, m: str) -> torch.Tensor:
    return ds.data[:, ds.modalities.index(m)].float() / 255.0


def classifiers_for(num_modalities: int, path: Path, seed: int) -> dict[str, ImageClassifier]:
    names = [f"m{k}" for k in range(num_modalities)]
    if path.exists():
        states = torch.load(path, map_location="cpu", weights_only=True)
        out = {}
        for m in names:
            clf = ImageClassifier()
            clf.load_state_dict(states[m])
            out[m] = clf.eval()
        return out
    train = PolyDigits("train", num_modalities, seed=seed, length=6000)
    test = PolyDigits("test", num_modalities, seed=seed)
    out = {}
    for m in names:
        start = time.perf_counter()
        out[m] = fit_classifier(stack(train, m), train.labels, seed=seed)
        acc = (predict(out[m], stack(test, m)) == test.labels).float().mean().item()
        print(f"classifier {m}: test accuracy {acc:.3f} ({time.perf_counter() - start:.0f}s)", flush=True)
    atomic_write(path, lambda tmp: torch.save({m: c.state_dict() for m, c in out.items()}, tmp))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", required=True, help="samples.npz written by `diffmvae sample`")
    p.add_argument("--classifiers", default=None, help="cache file (default: runs/classifiers_polydigits-v{VERSION}_M{M}.pt)")
    p.add_argument("--seed", type=int, default=1, help="dataset seed for the classifiers' training data")
    args = p.parse_args()
    data = np.load(args.samples)
    given = [str(g) for g in data["given"]]
    names = sorted((k for k in data.files if k.startswith("m")), key=lambda k: int(k[1:]))
    path = Path(args.classifiers or f"runs/classifiers_polydigits-v{VERSION}_M{len(names)}.pt")
    classifiers = classifiers_for(len(names), path, args.seed)
    samples = {m: torch.from_numpy(data[m]) for m in names}
    scores = conditional_coherence(samples, torch.from_numpy(data["label"]), given, classifiers)
    mean = float(np.mean(list(scores.values())))
    print(json.dumps({"given": given, "per_modality": scores, "coherence": round(mean, 4), "n": len(data["label"])}))


if __name__ == "__main__":
    main()
