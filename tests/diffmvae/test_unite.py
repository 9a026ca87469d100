"""Unite-and-Conquer in the library: composition rules, composing within one model (`sample/evaluate --compose`), and
across separately trained models (`diffmvae unite`), with the one-line refusals before any sampling."""

import json

import numpy as np
import pytest
import torch
import yaml
from tiny_run import copy_config, vae_args, write_config

from decoders import ConvImageDecoder, DiffusionDecoder, SamplingSettings
from decoders.diffusion import DDIM, DDPMProcess
from diffmvae import MultimodalVAE
from diffmvae.commands.main import main
from diffmvae.generation.unite import UniteSpec
from diffmvae.io import DiffMVAEError
from diffmvae.model.composition import Composition
from encoders import ConvImageEncoder

pytestmark = pytest.mark.slow

PROCESS = {"class_path": "decoders.diffusion.DDPMProcess",
           "init_args": {"prediction": "v", "sampler": {"class_path": "decoders.diffusion.DDIM", "init_args": {"steps": 3}}}}


def diffusion_decoder(cond_dropout=0.5, **extra):
    return {"class_path": "decoders.DiffusionDecoder",
            "init_args": {"latent_dim": 4, "unet_channels": [8, 8], "emb_dim": 16, "mean_channels": [4, 4], "mean_hidden": 8,
                          "process": PROCESS, "cond_dropout": cond_dropout, **extra}}


# ---------------------------------------------------------------------------------------------------- rules
def test_composition_rules_resolve_against_the_observed_modalities():
    assert Composition("each", (1.5,)).resolve(["m0", "m2"]) == [(("m0",), 1.5), (("m2",), 1.5)]
    assert Composition("each+poe", (1.0,), poe_weight=0.5).resolve(["m0", "m2"]) == [(("m0",), 1.0), (("m2",), 1.0), (("m0", "m2"), 0.5)]
    assert Composition("each+poe", (2.0,)).resolve(["m1"]) == [(("m1",), 2.0)]  # one modality: the PoE is that source
    assert Composition("poe", (3.0,)).resolve(["m0", "m1"]) == [(("m0", "m1"), 3.0)]
    assert Composition("poe", (0.25,), draws=4).resolve(["m0", "m1"]) == [(("m0", "m1"), 0.25)] * 4
    parsed = Composition.parse("m0;m2+m0", "1,0.5")
    assert parsed.sources == (("m0",), ("m2", "m0")) and parsed.resolve(["m0", "m2"]) == [(("m0",), 1.0), (("m0", "m2"), 0.5)]
    assert Composition.parse("m1", 2).resolve(["m1"]) == [(("m1",), 2.0)]
    for make, message in [
        (lambda: Composition("every"), "unknown composition sources 'every'"),
        (lambda: Composition("each", (1.0, 2.0)), "takes one weight for every source"),
        (lambda: Composition.parse("m0;m1", "1,2,3"), "2 composition sources need 1 or 2 weights"),
        (lambda: Composition.parse("each", "1,x"), "--weights must be numbers"),
        (lambda: Composition.parse("m0;m3").resolve(["m0", "m1"]), "names 'm3', which is not observed"),
        (lambda: Composition().resolve([]), "needs observed modalities"),
        (lambda: Composition(draws=0), "draws must be an integer >= 1"),
    ]:
        with pytest.raises(DiffMVAEError, match=message):
            make()


def test_unite_spec_is_validated_in_one_line(tmp_path):
    good = {"target": "m1", "models": [{"ckpt": "a/checkpoints/last.ckpt", "given": ["m0"]}, {"ckpt": "b/checkpoints/last.ckpt", "given": "m2", "weight": 2}]}
    spec = UniteSpec.from_mapping(good)
    assert [m.reliability for m in spec.members] == [0.5, 0.5] and spec.members[1].sources == ((("m2",), 2.0),)
    assert [m.name for m in spec.members] == ["a", "b"]
    for patch, message in [
        ({"models": []}, "'models' must be a non-empty list"),
        ({"extra": 1}, "unknown key 'extra'"),
        ({"models": [{"ckpt": "a", "given": ["m0"], "reliability": 0.7}, {"ckpt": "b", "given": ["m2"], "reliability": 0.2}]},
         r"reliabilities must sum to 1, got \[0.7, 0.2\]"),
        ({"models": [{"ckpt": "a"}]}, r"models\[0\]: every source needs 'given'"),
        ({"models": [{"ckpt": "a", "given": ["m0"], "weight": "x"}]}, "weight must be numbers"),
        ({"models": [{"given": ["m0"]}]}, r"models\[0\] needs a 'ckpt'"),
    ]:
        with pytest.raises(DiffMVAEError, match=message):
            UniteSpec.from_mapping({**good, **patch})
    path = tmp_path / "u.yaml"
    path.write_text("target: [")
    with pytest.raises(DiffMVAEError, match="is not valid YAML"):
        UniteSpec.from_file(path)


# ---------------------------------------------------------------------------------------------------- one model
def tiny_vae(cond_dropout=0.5, diffusion=True):
    torch.manual_seed(0)
    encoders = {m: ConvImageEncoder(4, image_size=28, channels=(4, 4), hidden_dim=8) for m in ("m0", "m1", "m2")}
    decoder = DiffusionDecoder(4, DDPMProcess(prediction="v", sampler=DDIM(3)), image_size=28, unet_channels=(8, 8), emb_dim=16,
                               mean_channels=(4,), mean_hidden=8, cond_dropout=cond_dropout, modalities=("m1", "m2"))
    torch.nn.init.normal_(decoder.net.out[-1].weight, std=0.1)
    torch.nn.init.normal_(decoder.net.null_z, std=1.0)
    decoders = {"m0": ConvImageDecoder(4, image_size=28, channels=(4, 4), hidden_dim=8)}
    decoders.update({"images": decoder} if diffusion else {m: ConvImageDecoder(4, image_size=28, channels=(4, 4), hidden_dim=8) for m in ("m1", "m2")})
    return MultimodalVAE(encoders, decoders, latent_dim=4).eval()


def test_a_model_composes_one_source_per_observed_modality():
    model = tiny_vae()
    g = torch.Generator().manual_seed(0)
    given = {"m0": torch.rand(3, 3, 28, 28, generator=g), "m1": torch.rand(3, 3, 28, 28, generator=g)}

    def run(composition, seed=1):
        with torch.no_grad():
            return model.generate(given, composition=composition, generator=torch.Generator().manual_seed(seed))

    each, again, poe = run(Composition("each", (1.5,))), run(Composition("each", (1.5,))), run(None)
    assert set(each) == {"m0", "m1", "m2"} and each["m2"].shape == (3, 3, 28, 28) and torch.equal(each["m0"], given["m0"])
    assert torch.equal(each["m2"], again["m2"]) and not torch.allclose(each["m2"], poe["m2"], atol=1e-3)
    model.check_composition(Composition("each"), ["m0", "m1"])
    with pytest.raises(DiffMVAEError, match="leave --start at 1"):
        model.check_composition(Composition("each"), ["m0"], SamplingSettings(start=0.5))
    no_dropout = tiny_vae(cond_dropout=0.0)
    no_dropout.check_composition(Composition("each", (0.5,)), ["m0", "m1"])  # weights summing to 1 need no null
    with pytest.raises(DiffMVAEError, match="decoder 'images' was trained without condition dropout"):
        no_dropout.check_composition(Composition("each"), ["m0", "m1"])
    with pytest.raises(DiffMVAEError, match="this model decodes m1, m2 feed-forward"):
        tiny_vae(diffusion=False).check_composition(Composition("each"), ["m0"])


# ---------------------------------------------------------------------------------------------------- the commands
def fit(tmp_path, name, keep=None, cond_dropout=0.5):
    cfg = copy_config()
    cfg["trainer"]["max_steps"] = 3
    modalities = keep or ["m0", "m1", "m2"]
    args = vae_args(cfg)
    args["encoders"] = {m: args["encoders"][m] for m in modalities}
    args["decoders"] = {m: args["decoders"][m] for m in modalities if m != "m1"}
    args["decoders"]["m1"] = diffusion_decoder(cond_dropout)
    if keep:
        cfg["data"]["init_args"]["keep"] = keep
    path, run = write_config(tmp_path / name, cfg)
    assert main(["fit", "--config", str(path)]) == 0
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unite")
    return {"full": fit(tmp, "full"), "a": fit(tmp, "pair_m0_m1", ["m0", "m1"]), "b": fit(tmp, "pair_m2_m1", ["m1", "m2"]),
            "b_plain": fit(tmp, "plain", ["m1", "m2"], cond_dropout=0.0)}


def test_sample_and_evaluate_compose_and_record_it(runs, classifier_file, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", "--ckpt", str(runs["full"]), "--given", "m0,m2", "--n", "4", "--out", str(out), "--compose", "each",
                 "--weights", "1.5"]) == 0
    with np.load(out / "samples.npz") as f:
        record = json.loads(str(f["sampling"]))
        assert f["m1"].shape == (4, 3, 28, 28)
    assert record["composition"] == {"sources": "each", "weights": [1.5], "poe_weight": None, "draws": 1}
    spec = tmp_path / "compose.yaml"
    spec.write_text(yaml.safe_dump({"sources": "each+poe", "weights": 1.0, "poe_weight": 0.5}))
    ev = tmp_path / "e"
    assert main(["evaluate", "--ckpt", str(runs["full"]), "--out", str(ev), "--n_samples", "6", "--classifiers", str(classifier_file),
                 "--probe_train", "16", "--prior", "gaussian", "--compose", str(spec)]) == 0
    summary = json.loads((ev / "metrics.json").read_text())
    assert summary["sampling"]["composition"] == {"sources": "each+poe", "weights": [1.0], "poe_weight": 0.5, "draws": 1}
    assert set(summary["coherence"]["conditional"]) == {"1", "2"}


def test_unite_across_models_trained_on_different_modalities(runs, classifier_file, tmp_path):
    out = tmp_path / "u"
    argv = ["unite", "--ckpt", str(runs["a"]), "--ckpt", str(runs["b"]), "--target", "m1", "--given", "m0", "--given", "m2",
            "--weights", "1.5,1", "--reliabilities", "0.25,0.75", "--n", "5", "--out", str(out), "--evaluate", "--classifiers", str(classifier_file)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"composed", "pair_m0_m1/run alone", "pair_m2_m1/run alone"}
    assert all(0 <= m["coherence"] <= 1 and np.isfinite(m["fd"]) and m["fd_pca"] >= 0 and m["n"] == 5 for m in metrics["metrics"].values())
    assert [m["reliability"] for m in metrics["unite"]["models"]] == [0.25, 0.75]
    with np.load(out / "samples.npz") as f:
        assert f["m1"].shape == (5, 3, 28, 28) and list(f["given"]) == ["m0", "m2"] and "m1_pair_m0_m1_run_alone" in f.files
        composed = f["m1"].copy()
    # The same composition from a YAML file gives the same samples.
    config = tmp_path / "unite.yaml"
    config.write_text(yaml.safe_dump({"target": "m1", "models": [
        {"ckpt": str(runs["a"]), "given": ["m0"], "weight": 1.5, "reliability": 0.25},
        {"ckpt": str(runs["b"]), "sources": [{"given": ["m2"], "weight": 1.0}], "reliability": 0.75}]}))
    assert main(["unite", "--config", str(config), "--n", "5", "--out", str(tmp_path / "v")]) == 0
    with np.load(tmp_path / "v" / "samples.npz") as f:
        np.testing.assert_array_equal(f["m1"], composed)
    # metrics.md: one row per sampler of the target, the numbers of metrics.json
    rows = [line.strip("|").split("|") for line in (out / "metrics.md").read_text().splitlines() if line.startswith("| ")][1:]
    table = {name.strip(): (float(coherence), float(fd), float(fd_pca)) for name, coherence, fd, fd_pca in rows}
    assert table == {name: (round(m["coherence"], 3), round(m["fd"], 1), round(m["fd_pca"], 2)) for name, m in metrics["metrics"].items()}


@pytest.mark.parametrize("args, message", [
    (["--target", "m2", "--given", "m0", "--given", "m1"], "cannot generate 'm2': its modalities are m0, m1"),
    (["--target", "m1", "--given", "m0", "--given", "m0"], "unknown modality 'm0' in 'given'; this model has m1, m2"),
    (["--target", "m1", "--given", "m1", "--given", "m2"], "the target 'm1' cannot also be given"),
    (["--target", "m1", "--given", "m0", "--given", "m2", "--reliabilities", "0.5,0.6"], r"reliabilities must sum to 1, got \[0.5, 0.6\]"),
    (["--target", "m1", "--given", "m0", "--given", "m2", "--weights", "1"], "2 --ckpt need 2 --weights and --reliabilities"),
    (["--target", "m1", "--given", "m0"], "2 --ckpt need 2 --given, got 1"),
    (["--target", "m1", "--given", "m0", "--given", "m2", "--start", "0.5"], "samples exactly"),
])
def test_unite_refuses_bad_input_before_sampling(runs, tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert main(["unite", "--ckpt", str(runs["a"]), "--ckpt", str(runs["b"]), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message.replace("\\", "") in err.replace("\\", "") or pytest.fail(err)
    assert err.count("\n") == 1 and "Traceback" not in err and not (out / "samples.npz").exists()


def test_unite_refuses_feed_forward_targets_and_decoders_without_dropout(runs, tmp_path, capsys):
    base = ["unite", "--out", str(tmp_path / "x"), "--n", "2"]
    assert main([*base, "--ckpt", str(runs["a"]), "--ckpt", str(runs["full"]), "--target", "m0", "--given", "m1", "--given", "m2"]) == 2
    assert "generates 'm0' with a ConvImageDecoder, not a diffusion decoder" in capsys.readouterr().err
    assert main([*base, "--ckpt", str(runs["a"]), "--ckpt", str(runs["b_plain"]), "--target", "m1", "--given", "m0", "--given", "m2"]) == 2
    assert "'m1' decoder was trained without condition dropout" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(runs["full"]), "--given", "m0", "--out", str(tmp_path / "y"), "--weights", "2"]) == 2
    assert "--weights, --poe_weight and --draws need --compose" in capsys.readouterr().err
