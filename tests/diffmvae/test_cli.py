"""End-to-end CLI: a tiny `diffmvae fit`, then `diffmvae sample` from any subset, and the one-line errors."""

import numpy as np
import pytest
import torch
from tiny_run import copy_config, vae_args, write_config

from decoders.optim import lr_factor
from diffmvae.commands.main import main
from diffmvae.store.build import build_data
from diffmvae.store.load import load_run


def test_fit_writes_run_directory(trained):
    cfg, ckpt = trained
    run = ckpt.parent.parent
    assert ckpt.is_file()
    assert (run / "metrics.csv").is_file() and {"train/kl", "train/m0/nll", "val/m2/nll"} <= set((run / "metrics.csv").read_text().splitlines()[0].split(","))
    assert list((run / "samples").glob("epoch_*.png"))
    raw = torch.load(ckpt, weights_only=True)
    assert set(raw["ema_state_dict"]) == {k[len("model.") :] for k in raw["state_dict"]}
    assert raw["diffmvae_config"]["data"]["init_args"]["num_modalities"] == 3


def test_scheduler_state_in_checkpoint(trained):
    ckpt = torch.load(trained[1], map_location="cpu", weights_only=True)
    (sched,) = ckpt["lr_schedulers"]
    steps = sched["last_epoch"]
    base = sched["base_lrs"][0]
    expected = base * lr_factor(steps, schedule="cosine", warmup=2, total=4)
    assert steps == 4
    assert sched["_last_lr"][0] == pytest.approx(expected)
    assert expected == pytest.approx(0.0, abs=1e-12)  # the 4-step run decays to zero at its end


def test_sample_from_subset_writes_npz_and_grid(trained, tmp_path):
    _, ckpt = trained
    out = tmp_path / "s"
    assert main(["sample", "--ckpt", str(ckpt), "--given", "m0,m2", "--n", "5", "--out", str(out), "--seed", "3"]) == 0
    data = np.load(out / "samples.npz")
    assert list(data["given"]) == ["m0", "m2"]
    for m in ("m0", "m1", "m2"):
        assert data[m].shape == (5, 3, 28, 28) and data[m].min() >= 0 and data[m].max() <= 1
    assert data["label"].shape == (5,)
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The observed modality is the real test input.
    run = load_run(ckpt)
    test = run.datamodule.dataset("test")
    assert any(np.allclose(data["m0"][0], test[i]["m0"].numpy()) for i in range(len(test)))


def test_same_seed_same_samples_and_checkpoint_round_trip(trained, tmp_path):
    _, ckpt = trained
    outs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        assert main(["sample", "--ckpt", str(ckpt), "--given", "m1", "--n", "4", "--out", str(tmp_path / name), "--seed", str(seed)]) == 0
        outs.append(np.load(tmp_path / name / "samples.npz"))
    assert np.array_equal(outs[0]["m0"], outs[1]["m0"])
    assert not np.array_equal(outs[0]["m0"], outs[2]["m0"])
    # Round trip: the rebuilt model's weights are the checkpoint's EMA weights.
    run = load_run(ckpt)
    raw = torch.load(ckpt, weights_only=True)
    for k, v in run.module.model.state_dict().items():
        assert torch.equal(v, raw["ema_state_dict"][k])


def test_unconditional_sampling(trained, tmp_path):
    _, ckpt = trained
    assert main(["sample", "--ckpt", str(ckpt), "--given", "none", "--n", "3", "--out", str(tmp_path)]) == 0
    assert list(np.load(tmp_path / "samples.npz")["given"]) == []


@pytest.mark.parametrize(
    "args,message",
    [
        (["--given", "m9"], "unknown modality 'm9' in --given; this model has m0, m1, m2"),
        (["--n", "0"], "--n must be >= 1, got 0"),
        (["--given", "m0,m1,m2"], "nothing is left to generate"),
    ],
)
def test_sample_bad_input_one_line(trained, tmp_path, capsys, args, message):
    _, ckpt = trained
    assert main(["sample", "--ckpt", str(ckpt), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"diffmvae: error: {message}"] or (len(err) == 1 and message in err[0])
    assert not (tmp_path / "o" / "samples.npz").exists()


def test_missing_and_corrupt_checkpoints(tmp_path, capsys):
    assert main(["sample", "--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["sample", "--ckpt", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a readable checkpoint" in err[0]


def test_a_checkpoint_of_version_0_1_is_refused_in_one_line(trained, tmp_path, capsys):
    raw = torch.load(trained[1], weights_only=True)
    raw["diffmvae_config"]["model"] = {"class_path": "diffmvae.DiffMVAE", "init_args": {"latent_dim": 4}}
    old = tmp_path / "old.ckpt"
    torch.save(raw, old)
    assert main(["sample", "--ckpt", str(old), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "was written by diffmvae 0.1" in err and not (tmp_path / "o").exists()


def test_existing_output_is_replaced_whole_never_half(trained, tmp_path, monkeypatch):
    _, ckpt = trained
    out = tmp_path / "o"
    assert main(["sample", "--ckpt", str(ckpt), "--given", "m0", "--n", "2", "--out", str(out)]) == 0
    before = (out / "samples.npz").read_bytes(), (out / "grid.png").read_bytes()
    import diffmvae.generation.sampling as sampling

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sampling.np, "savez", broken)
    with pytest.raises(RuntimeError):
        main(["sample", "--ckpt", str(ckpt), "--given", "m1", "--n", "2", "--out", str(out), "--seed", "5", "--overwrite"])
    assert ((out / "samples.npz").read_bytes(), (out / "grid.png").read_bytes()) == before
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "samples.npz"]


def test_fit_refuses_to_overwrite_a_run(trained, capsys):
    cfg, ckpt = trained
    before = ckpt.read_bytes()
    assert main(["fit", "--config", str(cfg)]) == 2
    assert "already holds a run; resume it with --ckpt_path" in capsys.readouterr().err
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize(
    "where,patch,message",
    [
        ("module", {"bogus_key": 1}, "bogus_key"),
        ("module", {"beta": "lots"}, "beta"),
        ("model", {"subsets": "all"}, "subsets"),
        ("model", {"decoders": {m: {"class_path": "decoders.ConvImageDecoder", "init_args": {"latent_dim": 4}} for m in ("m0", "m1")}},
         "no decoder generates modality 'm2'"),
    ],
)
def test_bad_config_one_line(tmp_path, capsys, where, patch, message):
    cfg = copy_config()
    (cfg["model"]["init_args"] if where == "module" else vae_args(cfg)).update(patch)
    path, run = write_config(tmp_path, cfg)
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffmvae: error:") and message in err[0]
    assert not (run / "checkpoints").exists()


def test_a_model_modality_the_data_does_not_have_fails_before_training(tmp_path, capsys):
    cfg = copy_config()
    for side in ("encoders", "decoders"):
        vae_args(cfg)[side]["m5"] = vae_args(cfg)[side]["m0"]
    path, run = write_config(tmp_path, cfg)
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the model has modality 'm5', which the data (PolyDigitsDataModule) does not have" in err
    assert not (run / "checkpoints").exists()


def test_sampling_overrides_need_a_diffusion_decoder(trained, tmp_path, capsys):
    _, ckpt = trained
    assert main(["sample", "--ckpt", str(ckpt), "--given", "m0", "--n", "2", "--out", str(tmp_path), "--steps", "5"]) == 2
    assert "--steps apply to diffusion decoders, and this model has none" in capsys.readouterr().err


def test_building_refuses_foreign_class_paths_before_importing_them(tmp_path, monkeypatch):
    from diffmvae.io import DiffMVAEError

    # a module that would leave a marker if imported
    (tmp_path / "evil_module.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\nclass Data: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    nested = {"class_path": "diffmvae.data.PolyDigitsDataModule", "init_args": {"base": {"class_path": "evil_module.Data"}}}
    for spec in ({"class_path": "os.system", "init_args": {"command": "true"}}, nested):
        with pytest.raises(DiffMVAEError, match="outside the packages"):
            build_data(spec, "test config")
    assert not (tmp_path / "imported").exists()


def test_help_lists_every_command_and_nothing_it_cannot_run(capsys):
    from diffmvae.commands.main import COMMANDS, SUMMARIES

    assert set(SUMMARIES) == set(COMMANDS) and "test" not in COMMANDS  # the models have no test_step
    assert main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(any(line.split()[:1] == [name] for line in lines) for name in COMMANDS)
    for argv, what in ((["test", "--config", "x.yaml"], "unknown command 'test'"), ([], "no command given")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"diffmvae: error: {what}; one of fit, validate, sample")


def test_lightning_chatter_only_with_verbose(tmp_path):
    """A fit prints none of Lightning's start-up lines (accelerator, tips, seed) unless --verbose; both train."""
    import os
    import subprocess
    import sys

    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(copy_config()))  # no folders named: each run's come from its default_root_dir
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = {}
    for name, extra in (("quiet", []), ("verbose", ["--verbose"])):
        root = tmp_path / name
        done = subprocess.run([sys.executable, "-m", "diffmvae", "fit", "--config", str(path), "--trainer.default_root_dir", str(root), *extra], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert any((root / "checkpoints").glob("*.ckpt")) and (root / "metrics.csv").is_file()
        outputs[name] = done.stdout + done.stderr
    for chatter in ("GPU available", "Seed set to"):
        assert chatter not in outputs["quiet"] and chatter in outputs["verbose"], chatter


def test_a_run_without_validation_ends_with_one_grid_of_the_averaged_weights(tmp_path):
    from diffmvae.io import save_png
    from diffmvae.store.load import load_run
    from diffmvae.training import SampleGrid

    cfg = copy_config()
    cfg["trainer"]["limit_val_batches"] = 0  # no validation epoch, so no grid until training ends
    path, run = write_config(tmp_path, cfg)
    assert main(["fit", "--config", str(path)]) == 0
    grids = sorted((run / "samples").glob("epoch_*.png"))
    assert len(grids) == 1
    loaded = load_run(run / "checkpoints" / "last.ckpt")  # the EMA weights, in eval mode
    expected = SampleGrid(rows=2).grid(loaded.module, loaded.datamodule, ["m0", "m1", "m2"])
    save_png(expected, tmp_path / "expected.png")
    assert grids[0].read_bytes() == (tmp_path / "expected.png").read_bytes()
    raw = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(not torch.equal(raw["state_dict"][f"model.{k}"], v) for k, v in raw["ema_state_dict"].items())  # the two differ


def test_a_run_whose_last_validation_drew_the_last_step_writes_no_second_grid(trained):
    _, ckpt = trained
    assert [p.name for p in sorted((ckpt.parent.parent / "samples").glob("epoch_*.png"))] == ["epoch_000.png", "epoch_001.png"]
