"""A decoder that reads another modality of its example trains through `diffmvae fit` and samples through
`diffmvae sample` with no change to the model, the LightningModule or the CLI: the slot MT-Diffusion uses."""

import numpy as np
import pytest
import torch
from tiny_run import DECODER, copy_config, vae_args, write_config

from decoders import ContextImageDecoder, Observed
from diffmvae.commands.main import main
from diffmvae.store.load import load_run


def observed(x, n=4):
    return Observed(x, torch.tensor([m in x for m in ("m0", "m1")]).expand(n, -1), ("m0", "m1"))


def test_context_decoder_reads_the_other_modality_when_it_is_observed():
    torch.manual_seed(0)
    dec = ContextImageDecoder(4, "m0", context_size=8, image_size=8, channels=(4,), hidden_dim=8, context_dropout=0.0).bind("m1")
    assert dec.reads == ("m0",) and dec.modalities == ("m1",)
    z, context = torch.randn(4, 4), torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        torch.nn.init.normal_(dec.absent)
        with_context = dec.generate(z, observed({"m0": context}), targets=["m1"])["m1"]
        without = dec.generate(z, observed({}), targets=["m1"])["m1"]
        other = dec.generate(z, observed({"m0": torch.rand(4, 3, 8, 8)}), targets=["m1"])["m1"]
    assert not torch.allclose(with_context, without) and not torch.allclose(with_context, other)
    # training: examples whose context is missing use the absent vector, so the term matches generation without it
    present = torch.tensor([[True, True], [False, True], [True, True], [False, True]])
    x = torch.rand(4, 3, 8, 8)
    terms = dec.loss(z, Observed({"m0": context, "m1": x}, present, ("m0", "m1")))
    feats = dec.features(z, Observed({"m0": context}, present, ("m0", "m1")), present[:, 0])
    torch.testing.assert_close(terms["m1/nll"], dec.image.nll(feats, x))
    torch.testing.assert_close(feats[1], dec.features(z, observed({}), torch.zeros(4, dtype=torch.bool))[1])
    with pytest.raises(ValueError, match="cannot read its own target 'm1'"):
        ContextImageDecoder(4, "m1").bind("m1")


def test_context_decoder_trains_and_samples_through_the_cli(tmp_path):
    cfg = copy_config()
    cfg["trainer"]["max_steps"] = 6
    vae_args(cfg)["decoders"]["m1"] = {"class_path": "decoders.ContextImageDecoder",
                                       "init_args": {"latent_dim": 4, "context": "m0", "channels": [4, 4], "hidden_dim": 8}}
    path, run = write_config(tmp_path, cfg)
    assert main(["fit", "--config", str(path)]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state["model.decoders.m1.context_net.0.weight"].abs().sum() > 0
    for given in ("m0", "m2", "m0,m2"):
        out = tmp_path / given.replace(",", "_")
        assert main(["sample", "--ckpt", str(ckpt), "--given", given, "--n", "3", "--out", str(out), "--seed", "0"]) == 0
        assert np.load(out / "samples.npz")["m1"].shape == (3, 3, 28, 28)
    # With the same latent, generating m1 with m0 observed differs from generating it without.
    model = load_run(ckpt).module.model
    z = torch.randn(3, 4)
    m0 = torch.rand(3, 3, 28, 28)
    with torch.no_grad():
        a = model.decode(z, ["m1"], given={"m0": m0})["m1"]
        b = model.decode(z, ["m1"], given={})["m1"]
    assert not torch.allclose(a, b)


def test_context_decoder_naming_a_missing_modality_fails_at_start_up(tmp_path, capsys):
    cfg = copy_config()
    vae_args(cfg)["decoders"]["m1"] = {"class_path": "decoders.ContextImageDecoder", "init_args": {"latent_dim": 4, "context": "m7"}}
    path, run = write_config(tmp_path, cfg)
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "decoder 'm1' names modality 'm7'" in err
    assert DECODER["class_path"] == "decoders.ConvImageDecoder" and not (run / "checkpoints").exists()
