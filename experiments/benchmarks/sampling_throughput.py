"""Sampling throughput of one trained model under several samplers, measured side by side on the same inputs.

    python experiments/benchmarks/sampling_throughput.py --ckpt runs/diffmvae/checkpoints/last.ckpt [--given m1] [--n 64]
    python experiments/benchmarks/sampling_throughput.py --ckpt runs/restore/checkpoints/last.ckpt --given m0_masked \
        --configs ddim:50 ancestral:1000

Generates ``--n`` examples with ``model.generate`` from the same given test examples (``--given none``: unconditional)
under every ``SAMPLER:STEPS`` of ``--configs`` (default DDIM-50 and Euler-Maruyama-1000, the Diff-MVAE* comparison;
MT-Diffusion's Algorithm 1 is ``ancestral:1000``), and prints examples per second, network evaluations per example
(a forward hook on every diffusion backbone) and the throughput ratio of the first configuration to each other.

With ``--judges CLASSIFIERS.pt`` (PolyDigits; e.g. ``experiments/polydigits/judges.pt``) every configuration also samples
``--judge_n`` test examples through ``diffmvae sample`` (default all of them) and is judged by
``experiments/polydigits/coherence.py``: coherence and both Fréchet distances (judge features and pixel PCA), each
beside the first configuration's (FD ratio, coherence difference in points):

    python experiments/benchmarks/sampling_throughput.py --ckpt runs/quickstart/checkpoints/last.ckpt --given m0 \
        --configs ddim:50 dpmpp_2m:10 dpmpp_2m:15 dpmpp_2m:20 ancestral:1000 --judges experiments/polydigits/judges.pt

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
from diffmvae.data.batches import collate_split
from diffmvae.store.load import load_run


def parse_config(text: str) -> tuple[str, int]:
    sampler, _, steps = text.partition(":")
    if not steps.isdigit():
        raise SystemExit(f"--configs: {text!r} is not SAMPLER:STEPS (e.g. ddim:50)")
    return sampler, int(steps)


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
    for sampler, steps in configs:
        sampling = SamplingSettings(sampler=sampler, steps=steps, guidance=args.guidance, start=args.start)
        try:
            model.check_sampling(sampling)
        except ValueError as e:
            print(f"{sampler}-{steps}: skipped ({e})")
            continue
        calls["images"] = 0
        start = time.perf_counter()
        model.generate(given, args.n, sampling=sampling, generator=torch.Generator().manual_seed(args.seed))
        seconds = time.perf_counter() - start
        results[(sampler, steps)] = args.n / seconds
        print(f"{sampler}-{steps}: {args.n / seconds:.2f} examples/s, {calls['images'] / args.n:.0f} network evaluations per example "
              f"({seconds:.1f}s for {args.n}, given {','.join(given_names) or 'none'}, guidance {args.guidance}, start {args.start})", flush=True)
    reference = configs[0]
    for other in configs[1:]:
        if reference in results and other in results:
            print(f"throughput ratio {reference[0]}-{reference[1]} / {other[0]}-{other[1]}: {results[reference] / results[other]:.1f}x")
    if args.judges:
        args.judge_n = args.judge_n or len(run.datamodule.dataset("test"))
        quality(args, [c for c in configs if c in results], given_names, results)


def quality(args: argparse.Namespace, configs: list[tuple[str, int]], given_names: list[str], speed: dict) -> None:
    """Sample the judged examples under every configuration with `diffmvae sample` and judge them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "polydigits"))
    from coherence import judge  # heavy: the judges, the real test set and the pixel PCA

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sampler, steps in configs:
            out = Path(tmp) / f"{sampler}-{steps}"
            cmd = [sys.executable, "-m", "diffmvae", "sample", "--ckpt", args.ckpt, "--given", ",".join(given_names) or "none",
                   "--out", str(out), "--seed", str(args.seed), "--sampler", sampler, "--steps", str(steps),
                   "--guidance", str(args.guidance), "--start", str(args.start)]
            cmd += ["--n", str(args.judge_n)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{sampler}-{steps}: diffmvae sample failed: {done.stderr.strip().splitlines()[-1]}")
            rows[(sampler, steps)] = judge(out / "samples.npz", args.judges)
    ref = rows[configs[0]]
    print(f"\nquality on {ref['n']} test examples, given {','.join(given_names) or 'none'} (judges {args.judges}); "
          f"ratios and differences against {configs[0][0]}-{configs[0][1]}")
    print(f"{'sampler':>20} {'ex/s':>7} {'coherence':>9} {'diff':>6} {'FD judge':>9} {'ratio':>6} {'FD PCA':>7} {'ratio':>6} {'speed-up':>8}")
    for key, row in rows.items():
        print(f"{key[0] + '-' + str(key[1]):>20} {speed[key]:7.2f} {row['coherence']:9.3f} {100 * (row['coherence'] - ref['coherence']):+6.1f} "
              f"{row['fd_mean']:9.2f} {row['fd_mean'] / ref['fd_mean']:6.3f} {row['fd_pca_mean']:7.3f} "
              f"{row['fd_pca_mean'] / ref['fd_pca_mean']:6.3f} {speed[key] / speed[configs[0]]:7.2f}x")


if __name__ == "__main__":
    main()
