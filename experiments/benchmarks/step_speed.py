"""Training-step time of the quickstart's feed-forward MoPoE under the library's speed settings, measured side by
side in one run (alternating rounds on the same batches from the same initial weights):

    python experiments/benchmarks/step_speed.py [--config experiments/polydigits/mopoe.yaml] [--rounds 5] [--steps 10] \
        [--multivae_python /path/to/multivae-venv/bin/python]

Rows: the per-modality model with PyTorch's default AdamW (a loop over parameters on CPU) and NCHW tensors, the
reference; AdamW over all parameters at once (``foreach``); ``channels_last`` (``TrainingModule(channels_last=True)``)
on top; and AdamW as one fused kernel (``fused``, what ``TrainingModule`` uses unless a gradient scaler runs); then the
fused step with the batch cut into one part per core, each on its own thread (``thread_split``). Then
the M same-shaped experts (encoder and decoder, forward and backward): M separate modules on B images each; the same
weights stacked and run as one computation by ``torch.func.stack_module_state`` + ``vmap``; and the most any
batching could save, one encoder and one decoder on all M x B images (identical FLOPs, one call per layer). Prints
milliseconds per step (median over rounds) and ratios. ``--bf16`` adds the fused rows with the forward pass under
bfloat16 autocast (``--trainer.precision bf16-mixed`` on a CPU): other arithmetic, fast only on CPUs with bfloat16
instructions (``avx512_bf16`` or AMX in ``lscpu``'s flags).

With ``--multivae_python`` (the python of a virtual environment holding multivae, e.g. made by
``python -m venv mv && mv/bin/pip install multivae==1.0.3``; multivae imports torchvision, which diffmvae's environment
must not hold) a row for multivae's MoPoE is added: ``multivae_worker.py`` builds it there from the same encoder and
decoder classes with the same initial weights, is fed the same batches and runs its rounds alternating with the others.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from step_time import build, read_config

from diffmvae.data import PolyDigits
from diffmvae.training.module import split_batch, to_channels_last
from diffmvae.training.threads import threaded_step


def variant(base: torch.nn.Module, batches: list, optimizer: dict, channels_last: bool, bf16: bool = False,
            split: int = 1) -> Callable[[int], float]:
    """A function running ``n`` training steps of a copy of ``base`` and returning the seconds they took; ``bf16``: the
    forward pass under CPU autocast to bfloat16 (what ``--trainer.precision bf16-mixed`` runs on a CPU); ``split``:
    the batch cut into that many parts, each on its own thread (``TrainingModule(thread_split=split)``)."""
    model = copy.deepcopy(base)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    inputs = [(to_channels_last(x) if channels_last else x, present) for x, present in batches]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **optimizer)
    state = {"i": 0}
    params = list(model.parameters())

    def part(x, present, g):
        return model.elbo(x, present, generator=g).loss().mean(), {}

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            x, present = inputs[state["i"] % len(inputs)]
            state["i"] += 1
            generator = torch.Generator().manual_seed(state["i"])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if split > 1:
                    loss = threaded_step(part, x, present, split, generator, params)[0]
                else:
                    loss = model.elbo(x, present, generator=generator).loss().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    return run


def side_by_side(runs: dict[str, Callable[[int], float]], rounds: int, steps: int) -> dict[str, float]:
    """Median milliseconds per step of each run, measured in alternating rounds after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds + 1):
        for name, run in runs.items():
            t = run(steps)
            if r:
                times[name].append(1e3 * t / steps)
    return {name: statistics.median(v) for name, v in times.items()}


def timed(step: Callable[[], torch.Tensor]) -> Callable[[int], float]:
    """A function running ``n`` forward + backward passes (``step()`` returns the loss) and returning their seconds."""
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            step().backward()
        return time.perf_counter() - start
    return run


class Expert(torch.nn.Module):
    """One modality's encoder and decoder as one module: the loss the expert benchmark times."""

    def __init__(self, encoder: torch.nn.Module, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(x).square().mean() + self.decoder.nll(z, x).mean()


def expert_runs(model: torch.nn.Module, batch: dict, modalities: list[str], channels_last: bool) -> dict[str, Callable[[int], float]]:
    """Forward + backward of every modality's encoder and decoder on its B images (separate); the same M experts with
    their weights stacked, run as one computation by ``torch.func.vmap`` (NCHW only: vmap cannot run group norm on
    channels_last tensors); and the bound on any batching: one encoder and one decoder on all M x B images (the same
    arithmetic, one call per layer)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    experts = [Expert(copy.deepcopy(model.encoders[m]), copy.deepcopy(model.decoders[m])).to(memory_format=fmt) for m in modalities]
    images = [batch[m].contiguous(memory_format=fmt) for m in modalities]
    z = [torch.randn(len(x), model.latent_dim) for x in images]
    stacked_x, stacked_z = torch.cat(images).contiguous(memory_format=fmt), torch.cat(z)

    runs = {"separate": timed(lambda: sum(e(x, zz) for e, x, zz in zip(experts, images, z))),
            "one network on all": timed(lambda: experts[0](stacked_x, stacked_z))}
    if not channels_last:
        params, buffers = torch.func.stack_module_state(experts)
        skeleton = copy.deepcopy(experts[0]).to("meta")
        batched = torch.func.vmap(lambda p, b, x, zz: torch.func.functional_call(skeleton, (p, b), (x, zz)))
        x_m, z_m = torch.stack(images), torch.stack(z)
        runs["vmap over stacked weights"] = timed(lambda: batched(params, buffers, x_m, z_m).sum())
    return runs


def multivae(python: str, config: dict, model: torch.nn.Module, batches: list, folder: str) -> Callable[[int], float]:
    """multivae's MoPoE in its own process (``multivae_worker.py``), built from the config's encoder and decoder with
    ``model``'s weights, fed ``batches``; returns a function running ``n`` of its steps, returning their seconds."""
    spec = config["model"]["init_args"]["model"]["init_args"]
    enc, dec = spec["encoders"]["m0"], spec["decoders"]["m0"]
    modalities = list(model.modalities)
    setup = {
        "modalities": modalities, "threads": torch.get_num_threads(), "latent_dim": model.latent_dim,
        "encoder": {"class": enc["class_path"].rsplit(".", 1)[1], "args": enc["init_args"]},
        "decoder": {"class": dec["class_path"].rsplit(".", 1)[1], "args": dec["init_args"]},
        "likelihood": dec["init_args"].get("likelihood", "laplace"), "scale": dec["init_args"].get("scale", 0.75),
        "beta": config["model"]["init_args"].get("beta", 1.0), "shape": list(batches[0][0][modalities[0]].shape[1:]),
        "weights": {f"{kind}.{m}": getattr(model, kind)[m].state_dict() for kind in ("encoders", "decoders") for m in modalities},
        "batches": [{m: x[m] for m in modalities} for x, _ in batches],
    }
    path = Path(folder) / "setup.pt"
    torch.save(setup, path)
    worker = Path(__file__).with_name("multivae_worker.py")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([python, str(worker), str(root), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    ready = proc.stdout.readline().split()
    if not ready or ready[0] != "ready":
        raise SystemExit(f"--multivae_python {python}: the multivae worker did not start (see its error above)")
    ours = sum(p.numel() for p in model.parameters())
    if int(ready[1]) != ours:
        raise SystemExit(f"multivae's MoPoE has {ready[1]} parameters, diffmvae's {ours}: not the same networks")

    def run(n: int) -> float:
        proc.stdin.write(f"{n}\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="experiments/polydigits/mopoe.yaml")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--multivae_python", default=None, help="python of a virtual environment holding multivae: adds its MoPoE")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="parts of the thread_split rows (default: the cores)")
    p.add_argument("--bf16", action="store_true", help="adds the fused rows under bfloat16 autocast (mixed precision on the CPU)")
    args = p.parse_args()
    config, batch_size, num_modalities = read_config(args.config)
    torch.manual_seed(0)
    data = PolyDigits("train", num_modalities=num_modalities, seed=0)
    model = build(config, num_modalities)
    batches = [split_batch(torch.utils.data.default_collate([data[i] for i in range(k * batch_size, (k + 1) * batch_size)]),
                           model.modalities) for k in range(4)]
    runs = {
        "per-parameter AdamW, NCHW (reference)": variant(model, batches, {"foreach": False}, False),
        "foreach AdamW, NCHW": variant(model, batches, {"foreach": True}, False),
        "foreach AdamW, channels_last": variant(model, batches, {"foreach": True}, True),
        "fused AdamW, channels_last": variant(model, batches, {"fused": True}, True),
        f"fused AdamW, NCHW, thread_split {args.threads}": variant(model, batches, {"fused": True}, False, split=args.threads),
        f"fused AdamW, channels_last, thread_split {args.threads}": variant(model, batches, {"fused": True}, True, split=args.threads),
    }
    if args.bf16:
        runs["fused AdamW, NCHW, bf16 autocast"] = variant(model, batches, {"fused": True}, False, bf16=True)
        runs["fused AdamW, channels_last, bf16 autocast"] = variant(model, batches, {"fused": True}, True, bf16=True)
        runs[f"fused AdamW, NCHW, bf16 autocast, thread_split {args.threads}"] = variant(
            model, batches, {"fused": True}, False, bf16=True, split=args.threads)
    tmp = tempfile.TemporaryDirectory()
    if args.multivae_python:
        if not all(m in model.decoders for m in model.modalities):
            raise SystemExit(f"--multivae_python: {args.config} has a decoder shared by several modalities; multivae's MoPoE has one each")
        runs["multivae 1.0.3 MoPoE, same networks"] = multivae(args.multivae_python, config, model, batches, tmp.name)
    ms = side_by_side(runs, args.rounds, args.steps)
    ref = ms[next(iter(ms))]
    print(f"training step, {args.config} (M = {num_modalities}, batch {batch_size}, {torch.get_num_threads()} threads), "
          f"median of {args.rounds} rounds of {args.steps} steps:")
    mv = ms.get("multivae 1.0.3 MoPoE, same networks")
    for name, t in ms.items():
        print(f"  {name:<44} {t:7.1f} ms   {t / ref:5.2f}x the reference" + (f"   {t / mv:5.2f}x multivae's" if mv else ""))
    if not all(m in model.decoders for m in model.modalities):
        return  # a decoder shared by several modalities: nothing to stack
    for cl in (False, True):
        e = side_by_side(expert_runs(model, batches[0][0], list(model.modalities), cl), args.rounds, args.steps)
        print(f"experts' forward+backward ({'channels_last' if cl else 'NCHW'}), {num_modalities} experts on {batch_size} images each:")
        for name, t in e.items():
            print(f"  {name:<28} {t:7.1f} ms   {t / e['separate']:5.2f}x separate")


if __name__ == "__main__":
    main()
