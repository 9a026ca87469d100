"""Coherence against Fréchet distance as the diffusion decoders' sampling start time varies, on one model.

    python experiments/polydigits/start_sweep.py --ckpt runs/diffmvae_star/checkpoints/last.ckpt \
        [--starts 1,0.5,0.3,0.2] [--given m0] [--reference runs/quickstart/checkpoints/last.ckpt] [--out DIR]
        [--sampler NAME] [--steps S] [--eta E] [--guidance W]

``start = 1`` samples each decoder's model exactly; below 1 the reverse process begins from the decoder's mean
image noised to that time, which keeps more of the mean's digit and less of the diffusion model's detail.
Every start uses the same latents (``z ~ q(z | given)`` for all test examples), so the rows differ only in the
decoders' sampling. Judged by the classifier set of `diffmvae evaluate`. Prints one JSON line per start and
writes ``start_sweep.png`` (and ``.json``) into ``--out``; ``--reference`` adds another model (e.g. the
feed-forward quickstart) as a point.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from decoders import SamplingSettings
from diffmvae.commands.common import add_sampling_arguments, sampling_settings
from diffmvae.data.batches import collate_split
from diffmvae.evaluation import FeatureExtractor, conditional_coherence, frechet_distance
from diffmvae.evaluation.runs import classifiers_for_run, label_free_features
from diffmvae.generation.sampling import parse_given
from diffmvae.io import atomic_write
from diffmvae.store.load import load_run


def judge(model, test, given, z, classifiers, extractors, pcas, seed, sampling=SamplingSettings()) -> dict:
    """Coherence and both Fréchet distances (classifier features; label-free pixel PCA) of the generated modalities."""
    with torch.no_grad():
        out = model.decode(z, given={m: test[m] for m in given}, sampling=sampling, generator=torch.Generator().manual_seed(seed))
    out = {m: x for m, x in out.items() if m not in given}
    coherence = conditional_coherence(out, test["label"], given, classifiers)
    fd = {m: frechet_distance(test[m], x, extractors[m]) for m, x in out.items()}
    fd_pca = {m: frechet_distance(test[m], x, pcas[m]) for m, x in out.items()}
    return {"coherence": float(np.mean(list(coherence.values()))), "fd": float(np.mean(list(fd.values()))),
            "fd_pca": float(np.mean(list(fd_pca.values()))),
            "per_modality": {m: {"coherence": round(coherence[m], 4), "fd": round(fd[m], 2), "fd_pca": round(fd_pca[m], 3)} for m in out}}


def latents(model, test, given, seed):
    with torch.no_grad():
        return model.sample_latent({m: test[m] for m in given}, generator=torch.Generator().manual_seed(seed))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--starts", default="1,0.5,0.3,0.2", help="comma-separated start times in (0, 1]")
    p.add_argument("--given", default="m0")
    p.add_argument("--reference", default=None, help="another checkpoint to show as a point (e.g. the feed-forward model)")
    add_sampling_arguments(p)  # --sampler/--steps/--eta/--guidance apply to every start; --start is ignored (see --starts)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifiers", default=None, help="classifier file (default: the cached set of `diffmvae evaluate`)")
    p.add_argument("--out", default=None, help="directory for start_sweep.png/.json (default: beside the checkpoint)")
    args = p.parse_args()
    starts = [float(s) for s in args.starts.split(",")]
    run = load_run(args.ckpt)
    model = run.module.model
    args.start = None
    base = sampling_settings(args, run.module)
    if not model.describe_sampling(base):
        raise SystemExit(f"{args.ckpt} has no diffusion decoder")
    given = parse_given(args.given, model.modalities)
    test = collate_split(run.datamodule.dataset("test"))
    classifiers, _, _ = classifiers_for_run(run, args.classifiers)
    extractors = {m: FeatureExtractor(c) for m, c in classifiers.items()}
    pcas = label_free_features(run, model.modalities)
    z = latents(model, test, given, args.seed)
    rows = []
    for start in starts:
        sampling = base.replace(start=start)
        described = next(iter(model.describe_sampling(sampling).values()))
        row = {"start": start, "sampler": f"{described['sampler']}-{described['steps']}",
               **judge(model, test, given, z, classifiers, extractors, pcas, args.seed + 1, sampling)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    reference = None
    if args.reference:
        ref = load_run(args.reference).module.model
        reference = judge(ref, test, given, latents(ref, test, given, args.seed), classifiers, extractors, pcas, args.seed + 1)
        print(json.dumps({"reference": args.reference, **reference}), flush=True)
    out = Path(args.out) if args.out else Path(args.ckpt).parent
    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    ax.plot([r["fd"] for r in rows], [r["coherence"] for r in rows], "o-", label=f"{Path(args.ckpt).resolve().parent.parent.name}, by start")
    for r in rows:
        ax.annotate(f"start {r['start']:g}", (r["fd"], r["coherence"]), textcoords="offset points", xytext=(5, -10), fontsize=8)
    if reference is not None:
        label = Path(args.reference).resolve().parent.parent.name  # runs/<name>/checkpoints/last.ckpt
        ax.plot([reference["fd"]], [reference["coherence"]], "s", color="C3", label=label)
        ax.axhline(reference["coherence"] - 0.05, color="C3", ls=":", lw=1, label=f"{label} − 5 points")
    ax.set_xlabel("Fréchet distance to real test images (lower is better)")
    ax.set_ylabel(f"coherence given {','.join(given)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out / "start_sweep.png", lambda tmp: fig.savefig(tmp, dpi=130, format="png"))
    atomic_write(out / "start_sweep.json", lambda tmp: tmp.write_text(json.dumps({"given": given, "rows": rows, "reference": reference}, indent=1)))
    print(f"wrote {out / 'start_sweep.png'}")


if __name__ == "__main__":
    main()
