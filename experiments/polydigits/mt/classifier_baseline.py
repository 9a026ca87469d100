"""The plain-classifier baseline of MT-Diffusion's image-label task: the same UNet backbone and label head as
``mt/image_label.yaml``, trained only to classify clean images (read at the first noise level, as the MT head is),
with the same steps, batch size, learning rate, schedule and EMA.

    python experiments/polydigits/mt/classifier_baseline.py [--config experiments/polydigits/mt/image_label.yaml] [--out runs/mt_classifier]
        [--head_position mid|out|output]

``--head_position`` replaces the config's label-head position, so a head is compared with the plain classifier of its
own backbone: ``output`` is the paper's -E, a small classifier of the UNet's output and input, trained here with the
UNet on the classification loss alone.

Writes ``classifier.pt`` (weights only) and ``result.json`` (test accuracy on every test example).
"""

from __future__ import annotations

import argparse
import copy
import json
from functools import partial
from pathlib import Path
from typing import get_args

import torch
import torch.nn.functional as F
import yaml
from torch_ema import ExponentialMovingAverage
from tqdm.auto import tqdm

from decoders import Decoder
from decoders.mt_parts import HeadPosition
from decoders.optim import lr_factor
from diffmvae.data.batches import collate_split
from diffmvae.io import atomic_write, torch_save
from diffmvae.store.build import build, build_data


def logits(decoder, images):
    batch = images.shape[0]
    t = torch.full((batch,), 1.0 / decoder.timesteps)
    values = {m: decoder.zero_value(m, batch, images.device, images.dtype) for m in decoder.aggregate}
    cond, _ = decoder.condition(None, values, batch, images.device)
    _, heads = decoder.network(decoder.forward_process.alpha_sigma(t)[0][:, None, None, None] * (2 * images - 1), t, cond)
    return heads["label"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="experiments/polydigits/mt/image_label.yaml")
    p.add_argument("--out", default="runs/mt_classifier")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--head_position", choices=get_args(HeadPosition), default=None, help="the label head's position (default: the config's)")
    args = p.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    torch.manual_seed(args.seed)
    decoder_spec = copy.deepcopy(cfg["model"]["init_args"]["model"]["init_args"]["decoder"])
    heads = decoder_spec["init_args"].get("heads") or {}
    if "label" not in heads:
        raise SystemExit(f"classifier_baseline: {args.config} has no label head (model.init_args.model.init_args.decoder.init_args.heads.label)")
    if args.head_position is not None:
        heads["label"]["position"] = args.head_position
    decoder = build({"decoder": decoder_spec}, {"decoder": Decoder}, args.config)["decoder"]
    data = build_data(cfg["data"], args.config)
    module_args = cfg["model"]["init_args"]
    steps, batch_size = cfg["trainer"]["max_steps"], data.batch_size
    train, test = collate_split(data.dataset("train")), collate_split(data.dataset("test"))
    params = list(decoder.net.parameters()) + list(decoder.head_nets.parameters())
    opt = torch.optim.AdamW(params, lr=module_args["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, schedule=module_args.get("lr_schedule", "constant"),
                                                           warmup=module_args.get("warmup_steps", 0), total=steps))
    ema = ExponentialMovingAverage(params, decay=cfg["trainer"]["callbacks"][0]["init_args"]["decay"])
    g = torch.Generator().manual_seed(args.seed)
    n = len(train["label"])
    order = torch.randperm(n, generator=g)
    cursor = 0
    for _ in tqdm(range(steps), desc="classifier baseline"):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=g), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        loss = F.cross_entropy(logits(decoder, train["m0"][idx]), train["label"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["trainer"].get("gradient_clip_val", 1.0))
        opt.step()
        sched.step()
        ema.update()
    with torch.no_grad():
        ema.copy_to(params)
        pred = torch.cat([logits(decoder, x).argmax(-1) for x in test["m0"].split(256)])
    accuracy = float((pred == test["label"]).float().mean())
    out = Path(args.out)
    atomic_write(out / "classifier.pt", lambda tmp: torch_save({"net": decoder.net.state_dict(), "heads": decoder.head_nets.state_dict()}, tmp))
    atomic_write(out / "result.json", lambda tmp: tmp.write_text(json.dumps({"test_accuracy": accuracy, "steps": steps, "n_test": len(pred), "config": args.config,
                                                                           "head_position": decoder.heads_spec["label"].position})))
    print(json.dumps({"plain_classifier_test_accuracy": accuracy}))


if __name__ == "__main__":
    main()
