"""Training-step time against the number of modalities M, measured side by side in one run.

    python experiments/benchmarks/step_time.py [--config experiments/polydigits/mopoe.yaml] [--steps 20]

Builds the config's model with M = 2..5 copies of modality m0's encoder/decoder, times full training steps
(ELBO, backward, AdamW) on PolyDigits batches, and prints the ratio step(M=5)/step(M=2). The mixture ELBO
evaluates every subset's KL analytically but decodes one subset per example, so the step cost should grow
like M (ratio ~2.5), not like the number of subsets 2^M - 1 (ratio ~10.3).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import yaml

from diffmvae.data import PolyDigits
from diffmvae.model import MultimodalModel
from diffmvae.store.build import build as build_objects
from diffmvae.training.module import split_batch


def build(config: dict, num_modalities: int) -> torch.nn.Module:
    """The config's model with M copies of modality m0's encoder and decoder (one decoder serving all M when the
    config's decoder serves several modalities)."""
    spec = copy.deepcopy(config["model"]["init_args"]["model"])
    args = spec["init_args"]
    names = [f"m{k}" for k in range(num_modalities)]
    args["encoders"] = {m: copy.deepcopy(args["encoders"]["m0"]) for m in names}
    if "m0" in args["decoders"]:
        args["decoders"] = {m: copy.deepcopy(args["decoders"]["m0"]) for m in names}
    else:
        key, dec = next(iter(args["decoders"].items()))
        args["decoders"] = {key: {**dec, "init_args": {**dec["init_args"], "modalities": names}}}
    return build_objects({"model": spec}, {"model": MultimodalModel}, "the benchmark's model")["model"]


def read_config(path: str) -> tuple[dict, int, int]:
    """A benchmark's config, with its data's batch size and number of modalities (128 and 5 when it names none)."""
    with open(path) as f:
        config = yaml.safe_load(f)
    data = config["data"]["init_args"]
    return config, data.get("batch_size", 128), data.get("num_modalities", 5)


def time_steps(model: torch.nn.Module, batch: dict, steps: int, warmup: int = 3) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, present = split_batch(batch, model.modalities)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = model.elbo(x, present).loss().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="experiments/polydigits/mopoe.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=None, help="default: the config's")
    args = p.parse_args()
    config, batch_size, _ = read_config(args.config)
    batch_size = args.batch_size or batch_size
    torch.manual_seed(0)
    rows = []
    for m in (2, 3, 4, 5):
        ds = PolyDigits("train", num_modalities=m, seed=0)
        batch = torch.utils.data.default_collate([ds[i] for i in range(batch_size)])
        model = build(config, m)
        params = sum(p.numel() for p in model.parameters())
        t = time_steps(model, batch, args.steps)
        rows.append((m, 2**m - 1, params, t))
        print(f"M={m}  subsets={2**m - 1:2d}  params={params / 1e6:.2f}M  step={t * 1e3:7.1f} ms", flush=True)
    t2, t5 = rows[0][3], rows[-1][3]
    print(f"ratio step(M=5)/step(M=2) = {t5 / t2:.2f}   (linear in M: {5 / 2:.2f}, linear in 2^M-1: {31 / 3:.2f})")
    print(f"batch_size={batch_size}  threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
