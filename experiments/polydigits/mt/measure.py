"""The MT-Diffusion table of the README: the three PolyDigits tasks against their single-task DDPMs, judged by the
digit classifiers of `diffmvae evaluate` on every test example.

    python experiments/polydigits/mt/measure.py --runs runs --classifiers runs/classifiers/<PolyDigits M=5 key>.pt \
        [--steps 50] [--sampler ddim] [--read_time T] [--out runs/mt_table]

Reads the checkpoints ``runs/NAME/checkpoints/last.ckpt`` of every run named ``restore``, ``image_label``,
``image_ddpm``, ``label_ddpm`` or ``translate``, or one of those followed by ``_`` and anything (``restore_ddpm``,
``image_label_null``, ``image_ddpm_v``, ...), measured as that kind of run, and ``runs/mt_classifier/classifier.pt``
(the plain-classifier baseline), and prints / writes ``mt_table.json`` and ``mt_table.md`` (the side-by-side table
when an MT-Diffusion run of those exact names was measured, then every measured run's figures, whatever its name):

* restoration: MSE inside and outside the masked region (images in [0, 1]) and the digit accuracy of the restored image
  (the unmasked region kept from the input, the masked one generated), of the whole generated image, of the masked input
  and of the clean image;
* image-label: accuracy of the label head on real test images (read at the first noise level, or at ``--read_time``,
  recorded with the run's figures; joint samples' labels are read the same way), against the plain classifier of the
  same backbone and budget; on joint unconditional samples (as the model is configured to draw
  them, and with the label drawn first and held, ``*_sampled``), the share whose generated label agrees with the
  judge's reading of the generated image, and their FD against the unconditional DDPM's; images given each test
  example's label: the judge's agreement and FD, exact and, for a model with the null path, guided at 2 and 3
  (opt-in); the same for the class-conditional DDPM (``label_ddpm``: the label through the UNet's embedding only);
* translation: coherence (the m1 judge reads the example's digit) and FD of m1 generated from m0.

Every Fréchet distance is given in both feature spaces of `diffmvae evaluate`: the judge's penultimate layer (``fd_*``)
and, label-free, 64 principal components of the pixels of 2000 real training images (``fd_pca_*``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from decoders import SamplingSettings
from decoders.mt_parts import check_read_time
from diffmvae.data.batches import collate_split
from diffmvae.evaluation import FeatureExtractor, frechet_distance, predict
from diffmvae.evaluation.classifier import load_classifier_set
from diffmvae.evaluation.runs import label_free_features
from diffmvae.generation.sampling import generate_from_subset
from diffmvae.io import atomic_write
from diffmvae.store.load import load_run


def generate(run, given, n, sampling, seed=0, batch=None):
    data = batch if batch is not None else collate_split(run.datamodule.dataset("test"))
    return generate_from_subset(run.module.model, data, given, n, generator=torch.Generator().manual_seed(seed), sampling=sampling,
                                progress=False), data


def restoration(run, judge, sampling):
    test = collate_split(run.datamodule.dataset("test"))
    out, _ = generate(run, ["m0_masked"], len(test["label"]), sampling, batch=test)
    mask = test["m0_mask"].expand_as(test["m0"])
    err = (out["m0"] - test["m0"]).pow(2)
    inside = float((err * mask).sum() / mask.sum())
    outside = float((err * (1 - mask)).sum() / (1 - mask).sum())
    restored = test["m0_masked"] * (1 - mask) + out["m0"] * mask  # the unmasked region kept, the masked one generated
    acc = float((predict(judge, restored) == test["label"]).float().mean())
    raw_acc = float((predict(judge, out["m0"]) == test["label"]).float().mean())
    masked_acc = float((predict(judge, test["m0_masked"]) == test["label"]).float().mean())
    return {"mse_masked_region": inside, "mse_unmasked_region": outside, "digit_accuracy": acc, "digit_accuracy_generated_whole": raw_acc,
            "digit_accuracy_of_masked_input": masked_acc, "digit_accuracy_of_clean_image": float((predict(judge, test["m0"]) == test["label"]).float().mean()),
            "mean_mask_share": float(test["m0_mask"].mean())}


GUIDANCE = (2.0, 3.0)


def test_and_pca(run):
    """The run's test split and its m0 pixel PCA (fitted on real training images), built once per run."""
    return collate_split(run.datamodule.dataset("test")), label_free_features(run, ["m0"])["m0"]


def given_label(run, judge, extractor, sampling, test, pca):
    """Images generated given every test example's label: the judge's agreement and both Fréchet distances, exact and
    (for a model with the null path; opt-in) guided."""
    out = {}
    scales = (1.0, *GUIDANCE) if run.module.model.decoders["joint"].cond_dropout > 0 else (1.0,)
    for w in scales:
        images, _ = generate(run, ["label"], len(test["label"]), sampling.replace(guidance=w), seed=2, batch=test)
        suffix = "" if w == 1.0 else f"_guidance_{w:g}"
        out[f"conditional_image_coherence{suffix}"] = float((predict(judge, images["m0"]) == test["label"]).float().mean())
        out[f"fd_conditional{suffix}"] = frechet_distance(test["m0"], images["m0"], extractor)
        out[f"fd_pca_conditional{suffix}"] = frechet_distance(test["m0"], images["m0"], pca)
    return out


def joint_samples(run, judge, extractor, sampling, n, test, pca, mode=None):
    """``n`` joint unconditional samples (with ``mode``, the ``unconditional`` sampling setting for them; default: the
    decoder's own): the share whose label the judge reads in the image, and the images' Fréchet distances."""
    joint, _ = generate(run, [], n, sampling.replace(unconditional=mode), seed=1, batch=test)
    return {"joint_label_agreement": float((predict(judge, joint["m0"]) == joint["label"]).float().mean()),
            "fd_unconditional": frechet_distance(test["m0"], joint["m0"], extractor),
            "fd_pca_unconditional": frechet_distance(test["m0"], joint["m0"], pca)}


def image_label(run, judge, extractor, sampling, n):
    """The label head on real test images; joint samples as the model was configured to draw them and, for a label,
    drawn first and held (``unconditional: sampled``, the ``*_sampled`` keys); images given a label."""
    test, pca = test_and_pca(run)
    read, _ = generate(run, ["m0"], len(test["label"]), sampling, batch=test)
    head_acc = float((read["label"] == test["label"]).float().mean())
    sampled = {f"{k}_sampled": v for k, v in joint_samples(run, judge, extractor, sampling, n, test, pca, "sampled").items()}
    return {"label_head_accuracy": head_acc, **joint_samples(run, judge, extractor, sampling, n, test, pca), **sampled,
            **given_label(run, judge, extractor, sampling, test, pca)}


def unconditional_fd(run, extractor, sampling, n):
    test, pca = test_and_pca(run)
    out, _ = generate(run, [], n, sampling, seed=1, batch=test)
    return {"fd_unconditional": frechet_distance(test["m0"], out["m0"], extractor),
            "fd_pca_unconditional": frechet_distance(test["m0"], out["m0"], pca)}


def translation(run, judge, extractor, sampling):
    test = collate_split(run.datamodule.dataset("test"))
    out, _ = generate(run, ["m0"], len(test["label"]), sampling, batch=test)
    return {"coherence_m1_given_m0": float((predict(judge, out["m1"]) == test["label"]).float().mean()),
            "fd_m1": frechet_distance(test["m1"], out["m1"], extractor),
            "fd_pca_m1": frechet_distance(test["m1"], out["m1"], label_free_features(run, ["m1"])["m1"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--classifiers", required=True, help="the PolyDigits judges (m0, m1) of `diffmvae evaluate`")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--n", type=int, default=360, help="unconditional samples")
    p.add_argument("--read_time", type=float, default=None, help="the noise level (a fraction of T) at which heads read an "
                                                                   "image; default each decoder's own (the first level)")
    p.add_argument("--out", default=None)
    p.add_argument("--only", default=None, help="comma-separated run names to measure (default: every one that exists); the "
                                                 "others are read back from an earlier mt_table.json in --out")
    args = p.parse_args()
    try:
        check_read_time(args.read_time)
    except ValueError as e:
        p.error(f"--{e}")
    torch.set_grad_enabled(False)
    judges, _, _ = load_classifier_set(args.classifiers)
    features = {m: FeatureExtractor(judges[m]) for m in ("m0", "m1")}
    sampling = SamplingSettings(sampler=args.sampler, steps=args.steps)
    runs = Path(args.runs)
    out = Path(args.out) if args.out else runs / "mt_table"
    only = set(args.only.split(",")) if args.only else None
    earlier = out / "mt_table.json"
    table: dict[str, dict] = json.loads(earlier.read_text())["table"] if only and earlier.is_file() else {}

    def have(name):
        path = runs / name / "checkpoints" / "last.ckpt"
        if not path.is_file():
            return None
        run = load_run(path)
        if args.read_time is not None:
            for decoder in run.module.model.decoders.values():
                decoder.read_time = args.read_time
        return run

    kinds = (("restore", lambda r: restoration(r, judges["m0"], sampling)),
             ("image_label", lambda r: image_label(r, judges["m0"], features["m0"], sampling, args.n)),
             ("image_ddpm", lambda r: unconditional_fd(r, features["m0"], sampling, args.n)),
             ("label_ddpm", lambda r: given_label(r, judges["m0"], features["m0"], sampling, *test_and_pca(r))),
             ("translate", lambda r: translation(r, judges["m1"], features["m1"], sampling)))
    for prefix, fn in kinds:
        names = sorted(p.name for p in runs.iterdir() if p.name == prefix or p.name.startswith(prefix + "_")) if runs.is_dir() else []
        for name in names:
            run = have(name) if only is None or name in only else None
            if run is not None:
                table[name] = fn(run) | ({"read_time": args.read_time} if args.read_time is not None else {})
                print(json.dumps({name: table[name]}), flush=True)
    baseline = runs / "mt_classifier" / "result.json"
    if baseline.is_file():
        table["plain_classifier"] = json.loads(baseline.read_text())
    atomic_write(out / "mt_table.json", lambda tmp: tmp.write_text(json.dumps({"sampling": sampling.record(), "table": table}, indent=1)))
    atomic_write(out / "mt_table.md", lambda tmp: tmp.write_text(markdown(table)))
    print(markdown(table))
    print(f"wrote {out / 'mt_table.json'} and mt_table.md")


ROWS = (  # (task, metric, MT-Diffusion run, single-task run)
    ("restoration", "MSE in the masked region", "restore", "restore_ddpm", "mse_masked_region"),
    ("restoration", "MSE in the unmasked region (whole image generated)", "restore", "restore_ddpm", "mse_unmasked_region"),
    ("restoration", "digit accuracy of the restored image", "restore", "restore_ddpm", "digit_accuracy"),
    ("image-label", "label accuracy on real test images (plain classifier)", "image_label", "plain_classifier", ("label_head_accuracy", "test_accuracy")),
    ("image-label", "joint samples: generated label = judge's reading", "image_label", None, "joint_label_agreement"),
    ("image-label", "image given label: judge agrees", "image_label", None, "conditional_image_coherence"),
    ("image quality", "FD of unconditional images, classifier features", "image_label", "image_ddpm", "fd_unconditional"),
    ("image quality", "FD of unconditional images, pixel PCA", "image_label", "image_ddpm", "fd_pca_unconditional"),
    ("image-label, null path", "label accuracy on real test images (plain classifier)", "image_label_null", "plain_classifier",
     ("label_head_accuracy", "test_accuracy")),
    ("image-label, null path", "joint samples: generated label = judge's reading", "image_label_null", None, "joint_label_agreement"),
    ("image-label, null path", "image given label: judge agrees", "image_label_null", "label_ddpm", "conditional_image_coherence"),
    ("image-label, null path", "image given label, guidance 2 (opt-in): judge agrees", "image_label_null", "label_ddpm",
     "conditional_image_coherence_guidance_2"),
    ("image-label, null path", "image given label, guidance 3 (opt-in): judge agrees", "image_label_null", "label_ddpm",
     "conditional_image_coherence_guidance_3"),
    ("image quality, null path", "FD of unconditional images, classifier features", "image_label_null", "image_ddpm", "fd_unconditional"),
    ("image quality, null path", "FD of unconditional images, pixel PCA", "image_label_null", "image_ddpm", "fd_pca_unconditional"),
    ("image quality, label drawn first", "FD of joint images, classifier features", "image_label_null", "image_ddpm",
     ("fd_unconditional_sampled", "fd_unconditional")),
    ("image quality, label drawn first", "FD of joint images, pixel PCA", "image_label_null", "image_ddpm",
     ("fd_pca_unconditional_sampled", "fd_pca_unconditional")),
    ("translation", "coherence of m1 given m0", "translate", "translate_ddpm", "coherence_m1_given_m0"),
    ("translation", "FD of m1 given m0, classifier features", "translate", "translate_ddpm", "fd_m1"),
    ("translation", "FD of m1 given m0, pixel PCA", "translate", "translate_ddpm", "fd_pca_m1"),
)


def markdown(table: dict[str, dict]) -> str:
    def cell(run, key):
        value = table.get(run, {}).get(key) if run else None
        return "-" if value is None else f"{value:.4g}"

    lines = []
    # the README's side-by-side table, which knows its MT-Diffusion runs by their own names (the plain classifier,
    # read back from its result.json whenever it exists, does not fill a table on its own)
    if any(row[2] in table for row in ROWS):
        lines = ["| task | metric | MT-Diffusion | single-task |", "|---|---|---|---|"]
        for task, metric, mt, single, key in ROWS:
            mt_key, single_key = key if isinstance(key, tuple) else (key, key)
            lines.append(f"| {task} | {metric} | {cell(mt, mt_key)} | {cell(single, single_key)} |")
        lines.append("")
    lines += ["| run | measure | value |", "|---|---|---|"]  # every run measured, whatever its name
    lines += [f"| {run} | {key} | {value:.4g} |" for run in sorted(table) for key, value in table[run].items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
