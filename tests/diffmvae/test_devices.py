"""Device and precision options of the commands that are not LightningCLI (the same names as Lightning's)."""

import numpy as np
import pytest
import torch
from tiny_run import copy_config, write_config

from diffmvae.commands.main import main
from diffmvae.devices import parse_index, pick_device
from diffmvae.io import DiffMVAEError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("devices")
    path, run = write_config(tmp, copy_config())
    assert main(["fit", "--config", str(path)]) == 0
    return run / "checkpoints" / "last.ckpt"


def test_bf16_mixed_sampling_on_cpu_is_finite_and_close_to_full_precision(trained, tmp_path):
    base = ["sample", "--ckpt", str(trained), "--given", "m0", "--n", "4", "--accelerator", "cpu"]
    assert main([*base, "--out", str(tmp_path / "full")]) == 0
    assert main([*base, "--out", str(tmp_path / "bf16"), "--precision", "bf16-mixed"]) == 0
    full, half = np.load(tmp_path / "full" / "samples.npz"), np.load(tmp_path / "bf16" / "samples.npz")
    for m in ("m1", "m2"):
        assert half[m].dtype == np.float32 and np.isfinite(half[m]).all()
        assert not np.array_equal(full[m], half[m])  # autocast did run the network in bfloat16
        assert np.abs(full[m] - half[m]).max() < 0.1  # bf16 keeps ~3 significant digits


def test_device_options_are_checked_in_one_line(trained, tmp_path, capsys):
    base = ["sample", "--ckpt", str(trained), "--given", "m0", "--n", "2", "--out", str(tmp_path / "o")]
    for extra, message in ((["--accelerator", "tpu"], "--accelerator 'tpu' is not one of"),
                           (["--precision", "64"], "--precision '64' is not one of"),
                           (["--devices", "2"], "these commands run on one device")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    if not torch.cuda.is_available():
        assert main([*base, "--accelerator", "cuda"]) == 2
        assert "no such device on this machine" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    # auto prefers a GPU: shown with the availability checks set by hand, on any machine
    for cuda, mps, expected in ((False, False, torch.device("cpu")), (True, False, torch.device("cuda", 0)), (False, True, torch.device("mps", 0))):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda cuda=cuda: 2 if cuda else 0)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda mps=mps: mps)
        assert pick_device("auto") == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("gpu", "[1]") == torch.device("cuda", 1)
    with pytest.raises(DiffMVAEError, match="this machine has 2 cuda device"):
        pick_device("cuda", "[2]")
    assert parse_index("[3]") == 3 and parse_index("1") == 0 and parse_index("auto") == 0
    with pytest.raises(DiffMVAEError, match="one device"):
        parse_index("4")


def test_prior_fit_takes_the_device_options(trained, tmp_path):
    out = tmp_path / "p.prior.ckpt"
    assert main(["prior", "fit", "--ckpt", str(trained), "--out", str(out), "--accelerator", "cpu", "--precision", "bf16-mixed",
                 "--prior.channels", "[8,8]", "--prior.emb_dim", "8", "--fit.steps", "3", "--fit.batch_size", "8",
                 "--fit.statistics_samples", "32", "--fit.warmup_steps", "1", "--prior.sample_steps", "3"]) == 0
    state = torch.load(out, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_classifiers_fit_takes_the_device_options(tmp_path, capsys):
    base = ["classifiers", "fit", "--data.class_path", "diffmvae.data.PolyDigitsDataModule", "--data.init_args.num_modalities", "1",
            "--data.init_args.train_length", "16", "--epochs", "1"]
    assert main([*base, "--out", str(tmp_path / "auto.pt")]) == 0
    assert main([*base, "--out", str(tmp_path / "cpu.pt"), "--accelerator", "cpu"]) == 0
    a, b = (torch.load(tmp_path / f, weights_only=True)["classifiers"]["m0"]["state_dict"] for f in ("auto.pt", "cpu.pt"))
    if not torch.cuda.is_available():  # auto is the CPU here: the same seed gives the same weights
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert main([*base, "--out", str(tmp_path / "gpu.pt"), "--accelerator", "gpu"]) == 2
        assert "no such device on this machine" in capsys.readouterr().err and not (tmp_path / "gpu.pt").exists()
    assert all(v.device.type == "cpu" for v in b.values())
