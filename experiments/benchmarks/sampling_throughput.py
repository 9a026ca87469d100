"""Sampling throughput of one trained model under several samplers, measured side by side on the same inputs.

    python experiments/benchmarks/sampling_throughput.py --ckpt runs/diffmvae/checkpoints/last.ckpt [--given m1] [--n 64]
    python experiments/benchmarks/sampling_throughput.py --ckpt runs/restore/checkpoints/last.ckpt --given m0_masked \
        --configs ddim:50 ancestral:1000

Generates ``--n`` examples with ``model.generate`` from the same given test examples (``--given none``: unconditional)
under every ``SAMPLER:STEPS`` of ``--configs`` (default DDIM-50 and Euler-Maruyama-1000, the Diff-MVAE* comparison;
MT-Diffusion's Algorithm 1 is ``ancestral:1000``), and prints examples per second, network evaluations per example
(a forward hook on every diffusion backbone) and the throughput ratio of the first configuration to each other.

With ``--judges CLASSIFIERS.pt`` (PolyDigits; e.g. ``experiments/polydigits/judges.pt``) every configuration also samples
``--judge_n`` test examples through ``diffmvae sample`` (default all of them) once per seed of ``--judge_seeds``, and is
judged by ``experiments/polydigits/coherence.py``: coherence and both Fréchet distances (judge features and pixel PCA),
averaged over the seeds, each beside the first configuration's (FD ratio, coherence difference in points with its
range over the seeds: the seeds give every configuration the same examples, latents and starting noise). A
configuration ``dpmpp_2m:STEPS:GRID`` picks DPM-Solver++'s grid (``time``, its default, or ``logsnr``; always passed
on, so a checkpoint whose own DPM-Solver++ uses the other grid is sampled as the row says):

    python experiments/benchmarks/sampling_throughput.py --ckpt runs/quickstart/checkpoints/last.ckpt --given m0 \
        --configs ddim:50 dpmpp_2m:10 dpmpp_2m:15 dpmpp_2m:20 dpmpp_2m:20:logsnr ancestral:1000 \
        --judges experiments/polydigits/judges.pt --judge_seeds 0 1 2

The DDPM-type decoders of the Diff-MVAE* configs are discrete-time, where Euler-Maruyama (a VP-SDE sampler) is refused;
``ancestral:1000`` is their 1000-step stochastic reference.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from decoders import SamplingSettings
from decoders.diffusion.samplers import GRIDS, SAMPLERS
from diffmvae.data.batches import collate_split
from diffmvae.store.load import load_run


Config = tuple[str, int, "str | None"]  # sampler, steps, DPM-Solver++ grid (None for the other samplers)


def parse_config(text: str) -> Config:
    parts = text.split(":")
    sampler, steps, grid = (parts + ["", ""])[:3]
    has_grid = sampler in SAMPLERS and SAMPLERS[sampler].has_grid
    grid = grid or (GRIDS[0] if has_grid else None)  # named, so a run whose own sampler differs is overridden
    if not steps.isdigit() or len(parts) > 3 or grid not in (None, *GRIDS):
        raise SystemExit(f"--configs: {text!r} is not SAMPLER:STEPS or dpmpp_2m:STEPS:GRID (e.g. ddim:50, dpmpp_2m:20:logsnr)")
    return sampler, int(steps), grid


def label(config: Config) -> str:
    return "-".join(str(part) for part in config if part is not None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--given", default=None, help="comma-separated given modalities, or 'none' (default: the first modality, "
                                                  "or none for a model that cannot be conditioned on it)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", nargs="+", default=["ddim:50", "euler_maruyama:1000"], help="SAMPLER:STEPS pairs; the first is the reference")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance scale for every sampler (guided steps batch 2 evaluations)")
    p.add_argument("--start", type=float, default=1.0, help="start time for every sampler (below 1: refinement of the mean)")
    p.add_argument("--judges", default=None, help="PolyDigits judge classifiers: also report coherence and both Fréchet distances")
    p.add_argument("--judge_n", type=int, default=None, help="test examples judged per configuration (default: all)")
    p.add_argument("--judge_seeds", type=int, nargs="+", default=[0], help="sampling seeds judged per configuration (averaged)")
    args = p.parse_args()
    if args.judges and not Path(args.judges).is_file():
        raise SystemExit(f"--judges: {args.judges} is not a file")
    configs = [parse_config(c) for c in args.configs]
    torch.set_grad_enabled(False)
    run = load_run(args.ckpt)
    model = run.module.model
    if args.given is None:
        given_names = [model.modalities[0]] if len(model.modalities) > 1 else []
    else:
        given_names = [] if args.given == "none" else args.given.split(",")
    unknown = [m for m in given_names if m not in model.modalities]
    if unknown:
        raise SystemExit(f"--given: {unknown[0]!r} is not a modality of {args.ckpt} ({', '.join(model.modalities)})")
    test = collate_split(run.datamodule.dataset("test"), args.n)
    given = {m: test[m] for m in given_names}
    nets = [dec.net for dec in model.decoders.values() if hasattr(dec, "net")]
    if not nets:
        raise SystemExit(f"{args.ckpt} has no diffusion decoder")
    calls = {"images": 0}
    for net in nets:
        net.register_forward_hook(lambda module, inputs, output: calls.__setitem__("images", calls["images"] + inputs[0].shape[0]))
    results = {}
    for config in configs:
        sampler, steps, grid = config
        try:
            sampling = SamplingSettings(sampler=sampler, steps=steps, grid=grid, guidance=args.guidance, start=args.start)
            model.check_sampling(sampling)
        except ValueError as e:
            print(f"{label(config)}: skipped ({e})")
            continue
        calls["images"] = 0
        start = time.perf_counter()
        model.generate(given, args.n, sampling=sampling, generator=torch.Generator().manual_seed(args.seed))
        seconds = time.perf_counter() - start
        results[config] = args.n / seconds
        print(f"{label(config)}: {args.n / seconds:.2f} examples/s, {calls['images'] / args.n:.0f} network evaluations per example "
              f"({seconds:.1f}s for {args.n}, given {','.join(given_names) or 'none'}, guidance {args.guidance}, start {args.start})", flush=True)
    reference = configs[0]
    for other in configs[1:]:
        if reference in results and other in results:
            print(f"throughput ratio {label(reference)} / {label(other)}: {results[reference] / results[other]:.1f}x")
    if args.judges:
        args.judge_n = args.judge_n or len(run.datamodule.dataset("test"))
        quality(args, [c for c in configs if c in results], given_names, results)


def quality(args: argparse.Namespace, configs: list[Config], given_names: list[str], speed: dict) -> None:
    """Sample the judged examples under every configuration and seed with `diffmvae sample` and judge them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "polydigits"))
    from coherence import judge  # heavy: the judges, the real test set and the pixel PCA

    rows: dict[Config, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            sampler, steps, grid = config
            for seed in args.judge_seeds:
                out = Path(tmp) / f"{label(config)}-seed{seed}"
                cmd = [sys.executable, "-m", "diffmvae", "sample", "--ckpt", args.ckpt, "--given", ",".join(given_names) or "none",
                       "--out", str(out), "--seed", str(seed), "--sampler", sampler, "--steps", str(steps),
                       "--guidance", str(args.guidance), "--start", str(args.start), "--n", str(args.judge_n)]
                cmd += ["--grid", grid] if grid else []
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{label(config)}: diffmvae sample failed: {done.stderr.strip().splitlines()[-1]}")
                rows.setdefault(config, []).append(judge(out / "samples.npz", args.judges))
    ref = rows[configs[0]]

    def mean(config: Config, key: str) -> float:
        return sum(r[key] for r in rows[config]) / len(rows[config])

    print(f"\nquality on {ref[0]['n']} test examples x {len(args.judge_seeds)} seeds, given {','.join(given_names) or 'none'} "
          f"(judges {args.judges}); ratios and differences against {label(configs[0])} (difference range over the seeds)")
    print(f"{'sampler':>20} {'ex/s':>7} {'coherence':>9} {'diff':>6} {'range':>13} {'FD judge':>9} {'ratio':>6} {'FD PCA':>7} {'ratio':>6} {'speed-up':>8}")
    for config in rows:
        diffs = [100 * (r["coherence"] - q["coherence"]) for r, q in zip(rows[config], ref)]
        print(f"{label(config):>20} {speed[config]:7.2f} {mean(config, 'coherence'):9.3f} {sum(diffs) / len(diffs):+6.1f} "
              f"{f'{min(diffs):+.1f}..{max(diffs):+.1f}':>13} {mean(config, 'fd_mean'):9.2f} {mean(config, 'fd_mean') / mean(configs[0], 'fd_mean'):6.3f} "
              f"{mean(config, 'fd_pca_mean'):7.3f} {mean(config, 'fd_pca_mean') / mean(configs[0], 'fd_pca_mean'):6.3f} "
              f"{speed[config] / speed[configs[0]]:7.2f}x")


if __name__ == "__main__":
    main()
