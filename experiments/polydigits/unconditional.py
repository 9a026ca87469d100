"""Unconditional generation with N(0, I) against the latent score prior, side by side on one model.

    python experiments/polydigits/unconditional.py --ckpt runs/quickstart/checkpoints/last.ckpt [--n 1000]
        [--sampler NAME] [--steps S] [--eta E] [--guidance W] [--start T]   # the sampling options of `diffmvae sample`

For each prior: Fréchet distance per modality to the real test images, in the feature space of the digit
classifier trained on real images (the cached set of `diffmvae evaluate`), and unconditional coherence (fraction of
joint samples on which all modalities' classifiers agree). Prints one JSON line per prior.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from diffmvae.commands.common import add_sampling_arguments, sampling_settings
from diffmvae.data.batches import collate_split
from diffmvae.evaluation import FeatureExtractor, frechet_distance, unconditional_coherence
from diffmvae.evaluation.runs import classifiers_for_run, label_free_features
from diffmvae.generation.sampling import choose_prior
from diffmvae.store.load import load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--prior_ckpt", default=None)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(p)
    args = p.parse_args()
    run = load_run(args.ckpt)
    model = run.module.model
    sampling = sampling_settings(args, run.module)
    test = collate_split(run.datamodule.dataset("test"))
    classifiers, _, _ = classifiers_for_run(run, None)
    extractors = {m: FeatureExtractor(c) for m, c in classifiers.items()}
    pcas = label_free_features(run, model.modalities)
    for choice in ("gaussian", "score"):
        prior, name = choose_prior(choice, args.prior_ckpt, args.ckpt, model)
        start = time.perf_counter()
        with torch.no_grad():
            z = prior.sample(args.n, generator=torch.Generator().manual_seed(args.seed))
            samples = model.decode(z, sampling=sampling, generator=torch.Generator().manual_seed(args.seed + 1))
        seconds = time.perf_counter() - start
        fd = {m: frechet_distance(test[m], samples[m], extractors[m]) for m in model.modalities}
        fd_pca = {m: frechet_distance(test[m], samples[m], pcas[m]) for m in model.modalities}
        coh = unconditional_coherence(samples, classifiers)
        print(json.dumps({"prior": name, "n": args.n, "fd_mean": round(sum(fd.values()) / len(fd), 2),
                          "fd": {m: round(v, 2) for m, v in fd.items()},
                          "fd_pca_mean": round(sum(fd_pca.values()) / len(fd_pca), 3), "fd_pca": {m: round(v, 3) for m, v in fd_pca.items()}, "coherence": {k: round(v, 4) for k, v in coh.items()},
                          "sample_seconds": round(seconds, 2),
                          "sampling": model.describe_sampling(sampling)}), flush=True)


if __name__ == "__main__":
    main()
