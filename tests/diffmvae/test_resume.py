"""Resume: a run stopped by a signal in the middle of an epoch (in a subprocess) writes last.ckpt, resumes with
--ckpt_path, and ends where the uninterrupted run ends: the same logged losses and the same weights, exactly, on CPU."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import copy_config, write_config

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]


def run_fit(path, *extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "diffmvae.cli", "fit", "--config", str(path), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def losses(run):
    with (run / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def config(tmp_path, name, signal=None):
    cfg = copy_config()
    cfg["trainer"].update({"max_steps": 10, "limit_val_batches": 1, "log_every_n_steps": 1})
    cfg["data"]["init_args"].update({"train_length": 32, "batch_size": 8})  # 4 batches an epoch: step 6 is mid-epoch
    callbacks = [{"class_path": "diffmvae.callbacks.SaveOnInterrupt"}]
    if signal:
        callbacks.append({"class_path": "faulty.SignalAt", "init_args": {"step": 6, "signal": signal}})
    return write_config(tmp_path / name, cfg, callbacks=callbacks)


@pytest.mark.slow
@pytest.mark.parametrize("signal", ["SIGTERM", "SIGINT"])
def test_a_run_stopped_mid_epoch_resumes_to_the_same_losses_and_weights(tmp_path, signal):
    path, run = config(tmp_path, "whole")
    assert run_fit(path).returncode == 0
    stopped_path, stopped = config(tmp_path, "stopped", signal)
    first = run_fit(stopped_path)
    last = stopped / "checkpoints" / "last.ckpt"
    assert last.is_file(), first.stderr[-2000:]
    assert torch.load(last, weights_only=True)["global_step"] == 6, first.stderr[-1500:]
    resumed = run_fit(config(tmp_path, "stopped")[0], "--ckpt_path", str(last))  # the same config, without the signal
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole, again = losses(run), losses(stopped)
    assert sorted(again) == sorted(whole) and len(whole) == 10  # the history before the stop is kept
    assert all(again[s] == whole[s] for s in whole), {s: (whole[s], again[s]) for s in whole if again[s] != whole[s]}
    a = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["global_step"] == b["global_step"] == 10
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
