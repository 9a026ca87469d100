"""Images and captions on captioned PolyDigits: how often a caption generated from an image names the image's
digit, how often images generated from a caption show the caption's digit, and the test set's token-level NLL.

    python experiments/polydigits/captions_study.py --ckpt runs/captions/checkpoints/last.ckpt \
        --classifiers runs/classifiers/<judge>.pt --out runs/captions/study

For every test example: captions generated given m0 (judged by the caption parser and by a bag-of-words classifier
trained on the real training captions) and images m0, m1 generated given the caption (judged by the image classifiers
of `diffmvae evaluate`). Writes ``study.json`` and ``captions.md`` (ten generated captions beside the true digit) and
the two sample folders (``samples.npz``, ``grid.png``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from diffmvae.data.batches import collate_split
from diffmvae.data.captions import parse_digit
from diffmvae.evaluation.classifier import fit_text_classifier, load_classifier_set, predict
from diffmvae.evaluation.suite import text_nll_per_token
from diffmvae.generation.sampling import generate_from_subset, sampling_record, write_samples
from diffmvae.io import atomic_write
from diffmvae.store.load import load_run

log = logging.getLogger("captions.study")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--classifiers", required=True, help="image classifier file of `diffmvae evaluate` (judges m0, m1)")
    p.add_argument("--out", required=True)
    p.add_argument("--text", default="text", help="the text modality")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    run = load_run(args.ckpt)
    model, data = run.module.model, run.datamodule
    images = [m for m in model.modalities if data.specs[m].is_image]
    test, train = collate_split(data.dataset("test")), collate_split(data.dataset("train"))
    labels = test["label"]
    judges, accuracy, _ = load_classifier_set(args.classifiers)
    text_clf = fit_text_classifier(train[args.text], train["label"], data.specs[args.text].num_classes, seed=args.seed)
    result: dict = {"n": int(labels.shape[0]), "image_judge_accuracy": {m: accuracy[m] for m in images},
                    "text_judge_accuracy": (predict(text_clf, test[args.text]) == labels).float().mean().item()}
    sampling = run.module.sampling
    for given in (images[0], args.text):
        generator = torch.Generator().manual_seed(args.seed)
        samples = generate_from_subset(model, test, [given], result["n"], generator=generator, sampling=sampling)
        texts = {args.text: data.decode_text(args.text, samples[args.text]["input_ids"])}
        write_samples(out / f"given_{given}", samples, data.specs, [given], labels, sampling=sampling_record(model, sampling), texts=texts)
        if given == args.text:
            result["images_from_text"] = {m: (predict(judges[m], samples[m]) == labels).float().mean().item() for m in images}
        else:
            strings = texts[args.text]
            result[f"captions_from_{given}"] = {
                "parser": sum(parse_digit(s) == y for s, y in zip(strings, labels.tolist())) / len(strings),
                "text_classifier": (predict(text_clf, samples[args.text]) == labels).float().mean().item(),
                "other_images": {m: (predict(judges[m], samples[m]) == labels).float().mean().item() for m in images if m != given},
            }
            real = data.decode_text(args.text, test[args.text]["input_ids"])
            rows = [f"| {y} | {r} | {s} |" for y, r, s in zip(labels.tolist()[:10], real[:10], strings[:10])]
            table = "| digit | real caption | generated from the image |\n|---|---|---|\n" + "\n".join(rows) + "\n"
            atomic_write(out / "captions.md", lambda f, t=table: f.write_text(t))
    result["text_nll_per_token"] = text_nll_per_token(model, test, seed=args.seed)
    result[f"text_nll_per_token_given_{images[0]}"] = text_nll_per_token(model, test, seed=args.seed, given=[images[0]])
    atomic_write(out / "study.json", lambda f: f.write_text(json.dumps(result, indent=2)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
