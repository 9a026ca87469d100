"""Where an image-label model uses its label: the noise-prediction loss on test images at a few noise levels with the
label right, with the label the noise network reads directly shuffled across the batch (or hidden), and with the
label the forward process's offset carries shuffled; and the label head's accuracy at each level, with the offset's
label right and shuffled (a head that reads its label from the offset, not the image, follows the shuffled one).

    python experiments/polydigits/mt/label_probe.py --ckpt runs/image_label_null/checkpoints/last.ckpt [--n 256]

A model that uses the label it reads directly loses more when that one is shuffled; one that reads the label from
the offset loses more when the offset's is. The loss is the training loss's (the squared error of the network's
prediction, summed over the pixels, mean over examples), on the same noise for every row of a level.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from decoders.diffusion.parameterization import target
from diffmvae.data.batches import collate_split
from diffmvae.store.load import load_run

VIEWS = (("right", "y", "y"), ("direct label shuffled", "y", "shuffled"), ("direct label hidden", "y", None),
         ("offset's label shuffled", "shuffled", "y"), ("both: offset's shuffled, direct hidden", "shuffled", None))
HEAD_VIEWS = {"direct label hidden": "offset's label right", "both: offset's shuffled, direct hidden": "offset's label shuffled"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--n", type=int, default=256, help="test examples")
    p.add_argument("--times", default="0.1,0.3,0.5,0.8")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    run = load_run(args.ckpt)
    dec = run.module.model.decoders["joint"].eval()
    test = collate_split(run.datamodule.dataset("test"))
    x0, y = 2 * test[dec.main][:args.n] - 1, test["label"][:args.n]
    n, g = x0.shape[0], torch.Generator().manual_seed(0)
    labels = {"y": y, "shuffled": y[torch.randperm(n, generator=g)]}
    k = dec.aggregate["label"].num_classes
    print("| t | " + " | ".join(f"loss, {v[0]}" for v in VIEWS) + "".join(f" | label head accuracy, {h}" for h in HEAD_VIEWS.values()) + " |")
    print("|---" * (len(VIEWS) + len(HEAD_VIEWS) + 1) + "|")
    for time in (float(s) for s in args.times.split(",")):
        t, eps = torch.full((n,), time), torch.randn(x0.shape, generator=g)
        row, head_acc = [], {}
        for name, offset, direct in VIEWS:
            onehot = {"label": F.one_hot(labels[offset], k).to(x0.dtype)}
            seen = {"label": F.one_hot(labels[direct], k).to(x0.dtype) if direct else torch.zeros(n, k, dtype=x0.dtype)}
            cond, enc = dec.condition(None, onehot, n, x0.device, direct=seen)
            marginal = dec.forward_process.given(enc)
            alpha, sigma = marginal.alpha_sigma(t)
            out, heads = dec.network(marginal.sample(x0, t, eps), t, cond)
            row.append(f"{float((out - target(dec.prediction, x0, eps, alpha, sigma)).pow(2).sum((1, 2, 3)).mean()):.1f}")
            if name in HEAD_VIEWS and "label" in heads:  # the direct label hidden: the view the head is trained and read on
                head_acc[name] = f"{float((heads['label'].argmax(-1) == y).float().mean()):.2f}"
        print(f"| {time:g} | " + " | ".join(row) + "".join(f" | {head_acc.get(h, '-')}" for h in HEAD_VIEWS) + " |", flush=True)


if __name__ == "__main__":
    main()
