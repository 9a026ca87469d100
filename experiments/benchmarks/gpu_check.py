"""GPU check: a few hundred training steps of the Diff-MVAE* config at PolyMNIST size (5 modalities, 3x28x28) in
bf16-mixed with channels_last, then sampling with DPM-Solver++(2M) at 15 steps and the paper's DDIM-50; prints steps/s,
images/s and peak GPU memory. CI never runs it.

    python experiments/benchmarks/gpu_check.py [--steps 300] [--precision bf16-mixed] [--batch_size 128] [--n 256] [--no_channels_last] \
        [--compile_backend inductor]

``--accelerator cpu`` runs the same code on the CPU (no memory figures): the test suite does, at a tiny size, so the
script cannot rot between the runs on a GPU.

The diffusion terms train from the first step (the config's feed-forward warm-up stage is left out, so the UNet is
exercised); the model, data and sampler are those of ``experiments/polydigits/diffmvae_star.yaml``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from decoders import SamplingSettings
from diffmvae.data.batches import collate_split
from diffmvae.store.build import build_run
from diffmvae.training.callbacks import EMA

CONFIG = Path(__file__).resolve().parents[1] / "polydigits" / "diffmvae_star.yaml"


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Wall time of the optimizer steps after ``skip`` warm-up steps (CUDA synchronised)."""

    def __init__(self, skip: int = 20) -> None:
        self.skip, self.start, self.steps = skip, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.skip:
            synchronize()
            self.start = time.perf_counter()
        elif trainer.global_step > self.skip:
            self.steps += 1

    def steps_per_second(self) -> float:
        synchronize()
        return self.steps / (time.perf_counter() - self.start)


def peak_gib(cuda: bool) -> str:
    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else "n/a (CPU)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--n", type=int, default=256, help="images generated per modality for the sampling throughput")
    p.add_argument("--accelerator", default="gpu", choices=("gpu", "cpu"), help="cpu: a smoke run of the same code")
    p.add_argument("--no_channels_last", action="store_true", help="train in NCHW order instead of channels_last")
    p.add_argument("--compile_backend", default=None, help="torch.compile the encoders and UNets with this backend (inductor); "
                   "the steps/s skip the first 20 steps, so the compile time is not counted")
    args = p.parse_args()
    cuda = args.accelerator == "gpu"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device on this machine (--accelerator cpu runs the same code on the CPU)")
    if args.steps < 2:
        raise SystemExit(f"gpu_check: --steps must be >= 2, got {args.steps}")
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"]["init_args"]["batch_size"] = args.batch_size
    cfg["model"]["init_args"]["channels_last"] = not args.no_channels_last
    cfg["model"]["init_args"]["compile_backend"] = args.compile_backend
    torch.manual_seed(0)
    module, data = build_run(cfg, "the GPU check's config")
    timer = StepTimer(skip=min(20, args.steps // 2))
    trainer = L.Trainer(accelerator=args.accelerator, devices=1, precision=args.precision, max_steps=args.steps, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[EMA(0.999), timer])
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=data)
    steps_per_s = timer.steps_per_second()
    train_peak = peak_gib(cuda)
    model = module.model.to(device).eval()
    test = collate_split(data.dataset("test"), args.n)
    given = {"m0": test["m0"].to(device)}
    generated = [m for m in model.modalities if m != "m0"]
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}, precision {args.precision}, batch {args.batch_size}, "
          f"channels_last {not args.no_channels_last}, compile {args.compile_backend or 'off'}")
    print(f"training: {steps_per_s:.2f} steps/s, peak memory {train_peak}")
    for sampler, steps in (("dpmpp_2m", 15), ("ddim", 50)):
        sampling = SamplingSettings(sampler=sampler, steps=steps)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"):
            if cuda:
                model.generate(given, sampling=sampling, generator=torch.Generator().manual_seed(0))  # warm-up
            synchronize()
            start = time.perf_counter()
            out = model.generate(given, sampling=sampling, generator=torch.Generator().manual_seed(1))
            synchronize()
            seconds = time.perf_counter() - start
        finite = all(torch.isfinite(out[m]).all().item() for m in generated)
        print(f"sampling ({sampler}-{steps}, m1..m4 given m0): {args.n * len(generated) / seconds:.1f} images/s, "
              f"peak memory {peak_gib(cuda)}, finite: {finite}")
        if not finite:
            raise SystemExit(f"gpu_check: the {sampler} samples are not finite")


if __name__ == "__main__":
    main()
