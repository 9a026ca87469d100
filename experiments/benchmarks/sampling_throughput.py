"""Sampling throughput of one trained diffusion decoder under several samplers, measured side by side.

    python experiments/benchmarks/sampling_throughput.py --ckpt runs/diffmvae/checkpoints/last.ckpt [--n 64]

For DDIM-50 and Euler-Maruyama-1000 (and any --extra SAMPLER:STEPS) on the same decoder and the same latents
(posteriors of test examples given another modality), prints images per second and network evaluations per sample,
counted with a forward hook on the decoder's backbone, and the ratio of the two throughputs.
"""

from __future__ import annotations

import argparse
import time

import torch

from decoders import SamplingSettings
from diffmvae.checkpoint import load_run
from diffmvae.evaluation.classifier import collate_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--modality", default=None, help="diffusion-decoded modality (default: the first one)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", nargs="*", default=[], help="more SAMPLER:STEPS pairs, e.g. ancestral:1000 ddim:20")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance scale for every sampler (guided steps batch 2 evaluations)")
    p.add_argument("--start", type=float, default=1.0, help="start time for every sampler (below 1: refinement of the mean)")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    run = load_run(args.ckpt)
    model = run.module.model
    names = list(model.describe_sampling(SamplingSettings()))
    if not names:
        raise SystemExit(f"{args.ckpt} has no diffusion decoder")
    target = args.modality or names[0]
    decoder = model.decoders[model.decoder_of[target]]
    source = next(m for m in model.modalities if m != target)
    test = collate_split(run.datamodule.dataset("test"), args.n)
    z = model.sample_latent({source: test[source]}, generator=torch.Generator().manual_seed(args.seed))
    calls = {"images": 0}
    decoder.net.register_forward_hook(lambda module, inputs, output: calls.__setitem__("images", calls["images"] + inputs[0].shape[0]))
    configs = [("ddim", 50), ("euler_maruyama", 1000)] + [(s.split(":")[0], int(s.split(":")[1])) for s in args.extra]
    results = {}
    for sampler, steps in configs:
        sampling = SamplingSettings(sampler=sampler, steps=steps, guidance=args.guidance, start=args.start)
        try:
            model.check_sampling(sampling)
        except ValueError as e:
            print(f"{sampler}-{steps}: skipped ({e})")
            continue
        calls["images"] = 0
        start = time.perf_counter()
        model.decode(z, [target], sampling=sampling, generator=torch.Generator().manual_seed(args.seed))
        seconds = time.perf_counter() - start
        results[(sampler, steps)] = args.n / seconds
        print(f"{sampler}-{steps}: {args.n / seconds:.2f} images/s, {calls['images'] / args.n:.0f} network evaluations per sample "
              f"({seconds:.1f}s for {args.n}, {type(decoder.process).__name__} on {target}, guidance {args.guidance}, start {args.start})", flush=True)
    if ("ddim", 50) in results and ("euler_maruyama", 1000) in results:
        print(f"throughput ratio DDIM-50 / Euler-Maruyama-1000: {results[('ddim', 50)] / results[('euler_maruyama', 1000)]:.1f}x")


if __name__ == "__main__":
    main()
