"""Diffusion decoders inside the ELBO: a staged tiny `diffmvae fit` (callbacks), warm start, sampling overrides,
config errors."""

import json

import numpy as np
import pytest
import torch
from tiny_run import copy_config, vae_args, write_config

from diffmvae.commands.main import main
from diffmvae.store.load import load_run

PROCESS = {"class_path": "decoders.diffusion.DDPMProcess", "init_args": {"sampler": {"class_path": "decoders.diffusion.DDIM", "init_args": {"steps": 2}}}}
WARMUP = {"class_path": "diffmvae.training.FeedForwardWarmup", "init_args": {"steps": 3, "freeze": ["encoders"]}}
EVERY_STEP = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
              "init_args": {"every_n_train_steps": 1, "save_top_k": -1, "filename": "{step}"}}


def diffusion_decoder(process=PROCESS, **extra):
    return {"class_path": "decoders.DiffusionDecoder",
            "init_args": {"latent_dim": 4, "unet_channels": [8, 8], "emb_dim": 16, "mean_channels": [4, 4], "mean_hidden": 8, "process": process,
                          **extra}}


def diffusion_config(process=PROCESS, shared=False):
    cfg = copy_config()
    cfg["trainer"]["max_steps"] = 6
    decoders = vae_args(cfg)["decoders"]
    if shared:
        del decoders["m1"], decoders["m2"]
        decoders["images"] = diffusion_decoder(process, modalities=["m1", "m2"])
    else:
        decoders["m1"] = diffusion_decoder(process)
    return cfg


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diff")
    every = {**EVERY_STEP, "init_args": {**EVERY_STEP["init_args"], "dirpath": str(tmp / "steps")}}
    path, run = write_config(tmp, diffusion_config(), callbacks=[WARMUP, every])
    assert main(["fit", "--config", str(path)]) == 0
    return run / "checkpoints" / "last.ckpt", tmp / "steps"


def weights(path, prefix):
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_staged_fit_warms_up_then_trains_the_unet_with_encoders_fixed(diffusion_run):
    last, steps = diffusion_run
    raw = torch.load(last, weights_only=True)
    assert raw["global_step"] == 6
    ckpt = {s: steps / f"step={s}.ckpt" for s in range(1, 7)}
    unet, enc, head = "model.decoders.m1.net.", "model.encoders.", "model.decoders.m1.mean_heads."
    # Stage 1 (steps 1-3): the UNet never runs, so it keeps its initial (zero-output) weights; encoders and heads train.
    assert same(weights(ckpt[1], unet), weights(ckpt[3], unet))
    assert raw["state_dict"]["model.decoders.m1.net.out.2.weight"].abs().sum() > 0
    assert ckpt[1].exists() and not same(weights(ckpt[1], enc), weights(ckpt[3], enc))
    # Stage 2 (steps 4-6): the UNet trains, the encoders stay exactly fixed, the mean head keeps training.
    assert not same(weights(ckpt[3], unet), weights(ckpt[6], unet))
    assert same(weights(ckpt[3], enc), weights(ckpt[6], enc))
    assert not same(weights(ckpt[3], head), weights(ckpt[6], head))
    # The learning rate restarted where the stage ended: warm-up 2 of each segment.
    sched = raw["lr_schedulers"][0]
    assert sched["last_epoch"] == 6


def test_every_term_is_logged(diffusion_run):
    last, _ = diffusion_run
    header = (last.parent.parent / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/m1/diffusion", "train/m1/mean_nll", "train/m0/nll", "train/kl", "train/loss", "val/m1/diffusion"} <= set(header)


def test_sample_with_sampling_overrides_records_them(diffusion_run, tmp_path, capsys):
    last, _ = diffusion_run
    base = ["sample", "--ckpt", str(last), "--given", "m0", "--n", "3", "--seed", "1"]
    assert main([*base, "--out", str(tmp_path / "a"), "--steps", "2", "--sampler", "ancestral"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--steps", "2", "--sampler", "ancestral"]) == 0
    a, b = np.load(tmp_path / "a" / "samples.npz"), np.load(tmp_path / "b" / "samples.npz")
    np.testing.assert_array_equal(a["m1"], b["m1"])
    assert a["m1"].shape == (3, 3, 28, 28) and 0 <= a["m1"].min() and a["m1"].max() <= 1
    record = json.loads(str(a["sampling"]))
    assert record["settings"]["sampler"] == "ancestral" and record["decoders"]["m1"]["sampler"] == "ancestral"
    assert record["decoders"]["m1"]["steps"] == 2 and record["decoders"]["m1"]["exact"] is True and "m0" not in record["decoders"]
    assert main([*base, "--out", str(tmp_path / "c"), "--sampler", "heun"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown sampler 'heun'" in err
    # this decoder was trained without condition dropout, so it has no null condition to guide with
    assert main([*base, "--out", str(tmp_path / "d"), "--guidance", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "guidance 2.0 needs a decoder trained with cond_dropout > 0" in err
    assert not (tmp_path / "d").exists()
    assert main([*base, "--out", str(tmp_path / "d"), "--unconditional", "sampled"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unconditional 'sampled' applies to MT-Diffusion decoders" in err
    assert main([*base, "--out", str(tmp_path / "e"), "--start", "0"]) == 2
    assert "start must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "f"), "--steps", "4", "--start", "0.5"]) == 0
    refined = json.loads(str(np.load(tmp_path / "f" / "samples.npz")["sampling"]))
    assert refined["settings"]["start"] == 0.5 and refined["decoders"]["m1"]["exact"] is False
    assert main([*base, "--out", str(tmp_path / "g"), "--eta", "0.5", "--sampler", "euler_maruyama"]) == 2
    assert "eta applies to the ddim sampler, not euler_maruyama" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "h"), "--sampler", "dpmpp_2m", "--steps", "3"]) == 0  # DPM-Solver++(2M)
    fast = json.loads(str(np.load(tmp_path / "h" / "samples.npz")["sampling"]))["decoders"]["m1"]
    assert fast["sampler"] == "dpmpp_2m" and fast["steps"] == 3 and fast["grid"] == "time"
    assert main([*base, "--out", str(tmp_path / "i"), "--sampler", "dpmpp_2m", "--steps", "3", "--grid", "logsnr"]) == 0
    other = np.load(tmp_path / "i" / "samples.npz")
    assert json.loads(str(other["sampling"]))["decoders"]["m1"]["grid"] == "logsnr"
    assert not np.array_equal(other["m1"], np.load(tmp_path / "h" / "samples.npz")["m1"])  # other evaluation times, other images
    assert main([*base, "--out", str(tmp_path / "j"), "--grid", "logsnr"]) == 2
    assert "grid applies to the dpmpp_2m sampler, not ddim" in capsys.readouterr().err


def test_warm_start_copies_feedforward_weights_into_the_mean_head(trained, tmp_path):
    _, ff_ckpt = trained
    import lightning as L

    from diffmvae.store.build import build
    from diffmvae.training.callbacks import warm_start

    module = build(diffusion_config(shared=True), {"model": L.LightningModule}, "test config")["model"]
    copied = warm_start(module.model, ff_ckpt)
    ff = torch.load(ff_ckpt, weights_only=True)["ema_state_dict"]
    for m in ("m1", "m2"):
        for k, v in module.model.decoders["images"].mean_heads[m].state_dict().items():
            torch.testing.assert_close(v, ff[f"decoders.{m}.{k}"])
    for k, v in module.model.encoders.state_dict().items():
        torch.testing.assert_close(v, ff[f"encoders.{k}"])
    assert copied == len(ff)  # every tensor of the feed-forward run found its place


def test_warm_start_callback_in_a_fit(trained, tmp_path, capsys):
    _, ff_ckpt = trained
    cfg = diffusion_config()
    cfg["trainer"]["max_steps"] = 1
    path, run = write_config(tmp_path, cfg, callbacks=[{"class_path": "diffmvae.training.WarmStart", "init_args": {"ckpt": str(ff_ckpt)}}])
    assert main(["fit", "--config", str(path)]) == 0
    path, run = write_config(tmp_path / "bad", cfg, callbacks=[{"class_path": "diffmvae.training.WarmStart", "init_args": {"ckpt": "nope.ckpt"}}])
    assert main(["fit", "--config", str(path)]) == 2
    assert "warm-start checkpoint nope.ckpt does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "process, message",
    [
        ({"class_path": "decoders.diffusion.DDPMProcess", "init_args": {"sampler": {"class_path": "decoders.diffusion.Heun"}}}, "Heun"),
        ({"class_path": "decoders.diffusion.DDPMProcess", "init_args": {"prediction": "score"}}, 'Parser key "prediction": Expected a typing.Literal'),
        ({"class_path": "decoders.diffusion.ScoreSDEProcess", "init_args": {"weighting": "snr"}}, "unknown DSM weighting 'snr'"),
        ({"class_path": "decoders.diffusion.VDMProcess", "init_args": {"schedule": {"class_path": "decoders.diffusion.Cosine"}}}, "Cosine"),
        ({"class_path": "decoders.diffusion.VDMProcess",
          "init_args": {"sampler": {"class_path": "decoders.diffusion.EulerMaruyama"}}}, "euler_maruyama needs the VP-SDE"),
    ],
)
def test_bad_diffusion_config_fails_at_start_up(process, message, tmp_path, capsys):
    path, run = write_config(tmp_path, diffusion_config(process))
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (run / "checkpoints").exists()  # it stopped before training


def test_staged_training_of_a_decoder_without_a_mean_head_term_is_refused_in_one_line(tmp_path, capsys):
    """A feed-forward warm-up leaves the diffusion terms out; a decoder whose only term is its diffusion loss would
    train nothing in it (its mean head learns only through that term)."""
    cfg = diffusion_config()
    vae_args(cfg)["decoders"]["m1"] = diffusion_decoder(mean_head_loss=False)
    path, run = write_config(tmp_path, cfg, callbacks=[WARMUP])
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "decoder 'm1' has mean_head_loss false" in err
    assert not (run / "checkpoints").exists()


def test_joint_training_moves_the_encoders_and_a_frozen_warm_up_does_not(tmp_path):
    """The paper's joint objective: with no warm-up callback every step updates the encoders, the UNet and the mean
    head, the diffusion term being the decoder's only term (compare the staged run, whose encoders stay fixed)."""
    cfg = diffusion_config()
    vae_args(cfg)["decoders"]["m1"] = diffusion_decoder(mean_head_loss=False)
    steps = tmp_path / "steps"
    path, run_dir = write_config(tmp_path, cfg, callbacks=[{**EVERY_STEP, "init_args": {**EVERY_STEP["init_args"], "dirpath": str(steps)}}])
    assert main(["fit", "--config", str(path)]) == 0
    first, last = steps / "step=1.ckpt", steps / "step=6.ckpt"
    for prefix in ("model.encoders.", "model.decoders.m1.net.", "model.decoders.m1.mean_heads."):
        assert not same(weights(first, prefix), weights(last, prefix)), prefix
    columns = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/m1/diffusion" in columns and [c for c in columns if c.startswith("train/m1/")] == ["train/m1/diffusion"]


def test_one_decoder_for_two_modalities_trains_and_round_trips(tmp_path):
    path, run = write_config(tmp_path, diffusion_config(shared=True), callbacks=[WARMUP])
    assert main(["fit", "--config", str(path)]) == 0
    raw = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ema, state = raw["ema_state_dict"], raw["state_dict"]
    key = "decoders.images.net.out.2.weight"
    assert not torch.equal(ema[key], state["model." + key])  # the EMA lags the raw weights
    model = load_run(run / "checkpoints" / "last.ckpt").module.model
    assert model.decoder_of == {"m0": "m0", "m1": "images", "m2": "images"}
    torch.testing.assert_close(model.decoders["images"].net.out[2].weight, ema[key])
    assert main(["sample", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--given", "m0", "--n", "2", "--out", str(tmp_path / "s")]) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["m2"].shape == (2, 3, 28, 28)


def test_default_sampling_of_a_run_is_its_config_value(tmp_path):
    """A refinement start is opt-in and named in the config (``sampling.start``); `diffmvae sample` then uses and
    records it, and the command line can still ask for exact samples."""
    cfg = diffusion_config()
    cfg["trainer"]["max_steps"] = 1
    cfg["model"]["init_args"]["sampling"] = {"start": 0.5, "steps": 2}
    path, run = write_config(tmp_path, cfg)
    assert main(["fit", "--config", str(path)]) == 0
    ckpt = str(run / "checkpoints" / "last.ckpt")
    assert main(["sample", "--ckpt", ckpt, "--given", "m0", "--n", "2", "--out", str(tmp_path / "a")]) == 0
    assert main(["sample", "--ckpt", ckpt, "--given", "m0", "--n", "2", "--out", str(tmp_path / "b"), "--start", "1"]) == 0
    a, b = (json.loads(str(np.load(tmp_path / d / "samples.npz")["sampling"])) for d in ("a", "b"))
    assert a["settings"]["start"] == 0.5 and a["decoders"]["m1"]["exact"] is False and a["decoders"]["m1"]["steps"] == 2
    assert b["settings"]["start"] == 1.0 and b["decoders"]["m1"]["exact"] is True


def test_touching_idle_parameters_changes_no_step(tmp_path, monkeypatch):
    """What makes plain DDP work with parameters idle by design (TrainingModule._touch_idle_parameters), forced on in
    one process: the UNet idle during the warm-up. The zero-weighted touch gives them zero
    gradients, which are dropped before the optimizer step, so AdamW leaves them (and their moments) exactly as without
    the touch: the same losses and the same weights, bit for bit."""
    from diffmvae.training.module import TrainingModule, parameters_in_graph

    idle_counts = []
    touch_fn = TrainingModule._touch_idle_parameters

    def spy(self, loss):
        out = touch_fn(self, loss)
        idle_counts.append(len(self._idle))
        return out

    monkeypatch.setattr(TrainingModule, "_touch_idle_parameters", spy)
    runs = {}
    for touch in (False, True):
        monkeypatch.setattr(TrainingModule, "touch_idle", touch)
        path, run = write_config(tmp_path / str(touch), diffusion_config(), callbacks=[WARMUP])
        assert main(["fit", "--config", str(path)]) == 0
        runs[touch] = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        runs[touch]["losses"] = (run / "metrics.csv").read_text()
    for key, value in runs[False]["state_dict"].items():
        assert torch.equal(value, runs[True]["state_dict"][key]), key
    assert runs[False]["losses"] == runs[True]["losses"]
    # It did touch: the whole UNet in the 3 warm-up steps, nothing after them.
    assert len(idle_counts) == 6 and min(idle_counts[:3]) > 10 and idle_counts[3:] == [0, 0, 0]
    assert runs[False]["optimizer_states"][0]["state"].keys() == runs[True]["optimizer_states"][0]["state"].keys()
    # The graph walk finds exactly the parameters a loss reaches.
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    reached = parameters_in_graph(a(torch.ones(1, 2)).sum())
    assert reached == {id(a.weight), id(a.bias)} and id(b.weight) not in reached


def test_in_joint_training_the_diffusion_term_reaches_the_encoders():
    """Eq. 17 trained jointly: a Diff-MVAE whose diffusion decoders contribute one term each (no mean-head loss)
    has one ELBO term per modality plus the KL, and the diffusion terms alone give every encoder a gradient."""
    from decoders import DiffusionDecoder
    from decoders.diffusion import DDIM, DDPMProcess
    from diffmvae.model.vae import MultimodalVAE
    from encoders import ConvImageEncoder

    torch.manual_seed(0)
    names = ("m0", "m1")
    encoders = {m: ConvImageEncoder(4, image_size=8, channels=(4, 4), hidden_dim=8) for m in names}
    decoders = {m: DiffusionDecoder(4, DDPMProcess(sampler=DDIM(3)), image_size=8, unet_channels=(8, 8), emb_dim=16, mean_channels=(8,),
                                    mean_hidden=8, mean_head_loss=False) for m in names}
    for dec in decoders.values():  # the UNet's output layer starts at zero: give it weights, as a few steps would
        torch.nn.init.normal_(dec.net.out[-1].weight, std=0.1)
    model = MultimodalVAE(encoders, decoders, 4)
    x = {m: torch.rand(6, 3, 8, 8) for m in names}
    record = model.elbo(x, generator=torch.Generator().manual_seed(0))
    assert set(record.terms) == {"m0/diffusion", "m1/diffusion", "kl"}
    sum(record.terms[f"{m}/diffusion"].sum() for m in names).backward()
    for m in names:
        grads = [p.grad for p in model.encoders[m].parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, m
