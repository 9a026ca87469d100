"""Diffusion decoders inside the ELBO: a staged tiny `diffmvae fit`, warm start, sampler overrides, config errors."""

import numpy as np
import pytest
import torch
import yaml
from tiny_run import TINY, write_config

from diffmvae.checkpoint import load_run
from diffmvae.cli import main

PROCESS = {"class_path": "decoders.diffusion.DDPMProcess", "init_args": {"steps": 2}}


def diffusion_config(process=PROCESS, **model_args):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["trainer"]["max_steps"] = 6
    dec = {"class_path": "decoders.DiffusionDecoder",
           "init_args": {"latent_dim": 4, "unet_channels": [8, 8], "emb_dim": 16, "mean_channels": [4, 4], "mean_hidden": 8, "process": process}}
    cfg["model"]["init_args"]["decoders"]["m1"] = dec
    cfg["model"]["init_args"].update({"feedforward_warmup_steps": 3, "freeze_encoders_after_warmup": True, "grid_steps": 2, **model_args})
    return cfg


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diff")
    path, run = write_config(tmp, diffusion_config())
    assert main(["fit", "--config", str(path)]) == 0
    return run / "checkpoints" / "last.ckpt"


def test_staged_fit_trains_the_diffusion_decoder(diffusion_run):
    raw = torch.load(diffusion_run, weights_only=True)
    enc = {k: v for k, v in raw["state_dict"].items() if k.startswith("model.encoders.")}
    assert enc and raw["global_step"] == 6
    run = load_run(diffusion_run)
    model = run.module.model
    assert model.decoders["m1"].is_diffusion and not model.decoders["m0"].is_diffusion
    # The UNet's zero-initialised output layer moved: the diffusion term trained after the warm-up stage.
    assert raw["state_dict"]["model.decoders.m1.net.out.2.weight"].abs().sum() > 0


def test_sample_with_sampler_overrides(diffusion_run, tmp_path, capsys):
    base = ["sample", "--ckpt", str(diffusion_run), "--given", "m0", "--n", "3", "--seed", "1"]
    assert main([*base, "--out", str(tmp_path / "a"), "--steps", "2", "--sampler", "ancestral"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--steps", "2", "--sampler", "ancestral"]) == 0
    a, b = np.load(tmp_path / "a" / "samples.npz"), np.load(tmp_path / "b" / "samples.npz")
    np.testing.assert_array_equal(a["m1"], b["m1"])
    assert a["m1"].shape == (3, 3, 28, 28) and 0 <= a["m1"].min() and a["m1"].max() <= 1
    assert main([*base, "--out", str(tmp_path / "c"), "--sampler", "euler_maruyama"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown sampler 'euler_maruyama' for DDPMProcess" in err
    # this decoder was trained without condition dropout, so it has no null condition to guide with
    assert main([*base, "--out", str(tmp_path / "d"), "--guidance", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "guidance 2.0 needs a decoder trained with cond_dropout > 0" in err
    assert not (tmp_path / "d").exists()
    assert main([*base, "--out", str(tmp_path / "e"), "--start", "0"]) == 2
    assert "start must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "f"), "--steps", "4", "--start", "0.5"]) == 0


def test_warm_start_copies_feedforward_weights_into_the_mean_head(trained, tmp_path):
    _, ff_ckpt = trained
    from diffmvae.checkpoint import instantiate

    cfg = diffusion_config()
    module = instantiate(cfg["model"])
    module.warm_start(ff_ckpt)
    ff = torch.load(ff_ckpt, weights_only=True)["ema_state_dict"]
    head = module.model.decoders["m1"].mean_head.state_dict()
    for k, v in head.items():
        torch.testing.assert_close(v, ff[f"decoders.m1.{k}"])
    for k, v in module.model.encoders.state_dict().items():
        torch.testing.assert_close(v, ff[f"encoders.{k}"])


@pytest.mark.parametrize(
    "process, message",
    [
        ({"class_path": "decoders.diffusion.DDPMProcess", "init_args": {"sampler": "heun"}}, "unknown sampler 'heun'"),
        ({"class_path": "decoders.diffusion.DDPMProcess", "init_args": {"prediction": "score"}}, 'Parser key "prediction": Expected a typing.Literal'),
        ({"class_path": "decoders.diffusion.ScoreSDEProcess", "init_args": {"weighting": "snr"}}, "unknown DSM weighting 'snr'"),
        ({"class_path": "decoders.diffusion.VDMProcess", "init_args": {"schedule": {"class_path": "decoders.diffusion.Cosine"}}}, "Cosine"),
    ],
)
def test_bad_diffusion_config_fails_at_start_up(process, message, tmp_path, capsys):
    path, run = write_config(tmp_path, diffusion_config(process))
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (run / "checkpoints").exists()  # it stopped before training


def test_shared_backbone_trains_one_unet_and_round_trips(tmp_path):
    cfg = diffusion_config(share_backbone=True)
    cfg["model"]["init_args"]["decoders"]["m0"] = cfg["model"]["init_args"]["decoders"]["m1"]
    path, run = write_config(tmp_path, cfg)
    assert main(["fit", "--config", str(path)]) == 0
    raw = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ema, state = raw["ema_state_dict"], raw["state_dict"]
    key = "decoders.{}.net.out.2.weight"
    # one UNet under both names, in the raw weights and in the EMA weights alike
    torch.testing.assert_close(ema[key.format("m0")], ema[key.format("m1")])
    torch.testing.assert_close(state["model." + key.format("m0")], state["model." + key.format("m1")])
    assert not torch.equal(ema[key.format("m0")], state["model." + key.format("m0")])  # the EMA lags the raw weights
    model = load_run(run / "checkpoints" / "last.ckpt").module.model
    assert model.decoders["m0"].net is model.decoders["m1"].net
    assert model.decoders["m0"].mean_head is not model.decoders["m1"].mean_head
    torch.testing.assert_close(model.decoders["m1"].net.out[2].weight, ema[key.format("m1")])


def test_shared_backbone_needs_a_mean_head():
    from decoders import DiffusionDecoder
    from decoders.diffusion_decoder import share_backbones

    film = {m: DiffusionDecoder(4, image_size=8, unet_channels=(8, 8), emb_dim=16, conditioning="film") for m in ("a", "b")}
    with pytest.raises(ValueError, match="decoder 'a' has conditioning 'film'"):
        share_backbones(film)
    with pytest.raises(ValueError, match="needs at least two diffusion decoders"):
        share_backbones({"a": film["a"]})
    other = {"a": DiffusionDecoder(4, image_size=8, unet_channels=(8, 8), emb_dim=16),
             "b": DiffusionDecoder(4, image_size=8, unet_channels=(8, 16), emb_dim=16)}
    with pytest.raises(ValueError, match="decoder 'b' has a UNet of other sizes"):
        share_backbones(other)
