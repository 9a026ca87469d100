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
    return subprocess.run([sys.executable, "-m", "diffmvae", "fit", "--config", str(path), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def losses(run):
    with (run / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def assert_same_weights(whole, resumed, step):
    """The uninterrupted run's and the resumed run's last checkpoints: both at ``step``, the same weights and EMA."""
    a, b = torch.load(whole, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["global_step"] == b["global_step"] == step
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def config(tmp_path, name, signal=None, step=6):
    cfg = copy_config()
    cfg["trainer"].update({"max_steps": 10, "limit_val_batches": 1, "log_every_n_steps": 1})
    cfg["data"]["init_args"].update({"train_length": 32, "batch_size": 8})  # 4 batches an epoch: step 6 is mid-epoch
    callbacks = [{"class_path": "diffmvae.training.SaveOnInterrupt"}]
    if signal:
        callbacks.append({"class_path": "faulty.SignalAt", "init_args": {"step": step, "signal": signal}})
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
    assert_same_weights(run / "checkpoints" / "last.ckpt", last, step=10)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_periodic_checkpoint_to_the_same_losses_and_weights(tmp_path):
    """SIGKILL leaves no chance to save: the run resumes from the last checkpoint ModelCheckpoint wrote (every 3 steps,
    so step 6, in the middle of an epoch) and ends where the uninterrupted run ends, exactly."""
    import yaml

    def every_3_steps(path):  # (a checkpoint every n steps is written only then: 12 steps end on one)
        cfg = yaml.safe_load(path.read_text())
        cfg["trainer"]["max_steps"] = 12
        cfg["trainer"]["callbacks"][-1]["init_args"]["every_n_train_steps"] = 3
        path.write_text(yaml.safe_dump(cfg))
        return path

    path, run = config(tmp_path, "whole")
    assert run_fit(every_3_steps(path)).returncode == 0
    killed_path, killed = config(tmp_path, "killed", "SIGKILL", step=7)
    first = run_fit(every_3_steps(killed_path))
    assert first.returncode == -9, first.stderr[-1500:]  # killed after step 7; the last checkpoint is step 6's
    last = killed / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no half-written file beside it
    resumed = run_fit(every_3_steps(config(tmp_path, "killed")[0]), "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole, again = losses(run), losses(killed)
    assert set(range(6, 12)) <= set(again)  # what the killed run's logger had flushed before may come first
    assert all(again[s] == whole[s] for s in again), {s: (whole[s], again[s]) for s in again if again[s] != whole[s]}
    assert_same_weights(run / "checkpoints" / "last.ckpt", last, step=12)
