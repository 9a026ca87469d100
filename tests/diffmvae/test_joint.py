"""MT-Diffusion on the same loop: a standalone joint model trains through `diffmvae fit`, samples through
`diffmvae sample` with any subset given, is scored by `diffmvae evaluate`; an MT decoder serves a Diff-MVAE too."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import copy_config, vae_args, write_config

from diffmvae.commands.main import main
from diffmvae.io import DiffMVAEError
from diffmvae.model import Composition
from diffmvae.store import load_run

MT = {
    "class_path": "decoders.MTDiffusionDecoder",
    "init_args": {
        "main": "m0", "unet_channels": [8, 8], "emb_dim": 16, "timesteps": 50,
        "sampler": {"class_path": "decoders.diffusion.DDIM", "init_args": {"steps": 3}},
        "aggregate": {"label": {"kind": "embedding", "num_classes": 10,
                                "weight": {"class_path": "decoders.diffusion.aggregation.PaperWeight", "init_args": {"scale": 0.01}}}},
        "heads": {"label": {"kind": "label", "position": "mid", "num_classes": 10}},
    },
}


def joint_config(decoder=MT, data=None):
    cfg = copy_config()
    cfg["model"]["init_args"]["model"] = {"class_path": "diffmvae.JointDiffusion", "init_args": {"decoder": decoder}}
    cfg["data"]["init_args"] = data or {"num_modalities": 1, "label_modality": True, "batch_size": 8, "train_length": 16}
    return cfg


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("joint")
    path, run = write_config(tmp, joint_config())
    assert main(["fit", "--config", str(path)]) == 0
    return run / "checkpoints" / "last.ckpt"


def test_joint_model_trains_logs_its_terms_and_samples_any_subset(joint_run, tmp_path):
    header = (joint_run.parent.parent / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/m0/diffusion", "train/label/head", "val/label/head"} <= set(header)
    for given in ("none", "label", "m0"):
        out = tmp_path / given
        assert main(["sample", "--ckpt", str(joint_run), "--given", given, "--n", "4", "--out", str(out)]) == 0
        data = np.load(out / "samples.npz")
        assert data["m0"].shape == (4, 3, 28, 28) and data["label"].shape == (4,) and set(np.unique(data["label"])) <= set(range(10))
    record = json.loads(str(np.load(tmp_path / "none" / "samples.npz")["sampling"]))
    assert record["decoders"]["m0"]["sampler"] == "ddim" and record["decoders"]["label"]["steps"] == 3
    assert record["decoders"]["m0"]["unconditional"] == "reestimate"
    out = tmp_path / "sampled"  # the label drawn first and held, for this call only; recorded
    assert main(["sample", "--ckpt", str(joint_run), "--given", "none", "--n", "4", "--out", str(out), "--unconditional", "sampled"]) == 0
    record = json.loads(str(np.load(out / "samples.npz")["sampling"]))
    assert record["settings"]["unconditional"] == "sampled" and record["decoders"]["m0"]["unconditional"] == "sampled"
    # the joint model takes the composition argument every model takes, and refuses it in one line
    model = load_run(joint_run).module.model
    with pytest.raises(DiffMVAEError, match="does not compose predictions from several sources"):
        model.generate({"label": torch.zeros(2, dtype=torch.long)}, composition=Composition("each"))


def test_joint_model_is_evaluated_where_the_metrics_apply(joint_run, tmp_path):
    out = tmp_path / "eval"
    clf = tmp_path / "clf.yaml"
    import yaml

    clf.write_text(yaml.safe_dump({"data": {"class_path": "diffmvae.data.PolyDigitsDataModule",
                                            "init_args": {"num_modalities": 1, "label_modality": True, "train_length": 16}}, "epochs": 1}))
    assert main(["classifiers", "fit", "--config", str(clf), "--out", str(tmp_path / "clf.pt")]) == 0
    assert main(["evaluate", "--ckpt", str(joint_run), "--out", str(out), "--n_samples", "6", "--classifiers", str(tmp_path / "clf.pt"),
                 "--probe_train", "8"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["coherence"]["conditional"]) == {"1"} and 0 <= summary["coherence"]["unconditional"] <= 1
    assert summary["latent_probe"] == {} and summary["prior"].startswith("none") and summary["elbo"] is None


def test_an_mt_decoder_serves_an_image_modality_of_a_diff_mvae(tmp_path):
    """Conditioned on the VAE latent and aggregating another observed modality (identity encoder)."""
    cfg = copy_config()
    cfg["trainer"]["max_steps"] = 3
    vae_args(cfg)["decoders"]["m1"] = {
        "class_path": "decoders.MTDiffusionDecoder",
        "init_args": {"main": "m1", "latent_dim": 4, "unet_channels": [8, 8], "emb_dim": 16, "timesteps": 50,
                      "sampler": {"class_path": "decoders.diffusion.DDIM", "init_args": {"steps": 3}},
                      "aggregate": {"m0": {"kind": "identity",
                                           "weight": {"class_path": "decoders.diffusion.aggregation.ConstantWeight", "init_args": {"value": 0.01}}}},
                      "heads": {"m0": {"kind": "image", "position": "out"}}},
    }
    path, run = write_config(tmp_path, cfg)
    assert main(["fit", "--config", str(path)]) == 0
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/m1/diffusion", "train/m1/head_m0", "train/m0/nll"} <= set(header)
    for given in ("m0", "m2"):
        assert main(["sample", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--given", given, "--n", "2", "--out", str(tmp_path / given)]) == 0


def test_a_conditional_only_model_trains_with_sample_grids(tmp_path):
    """A single-task conditional DDPM (the UNet sees m0, nothing is aggregated, no head) cannot sample with nothing
    given: the grid shows only its conditional half, conditioned on a modality it can be given."""
    decoder = {"class_path": "decoders.MTDiffusionDecoder", "init_args": {
        "main": "m1", "unet_channels": [8, 8], "emb_dim": 16, "timesteps": 50, "inputs": ["m0"],
        "sampler": {"class_path": "decoders.diffusion.DDIM", "init_args": {"steps": 2}},
        "aggregate": {"m0": {"kind": "identity", "weight": {"class_path": "decoders.diffusion.aggregation.ConstantWeight", "init_args": {"value": 0.0}}}}}}
    path, run = write_config(tmp_path, joint_config(decoder, {"num_modalities": 2, "batch_size": 8, "train_length": 16}))
    assert main(["fit", "--config", str(path)]) == 0
    grids = list((run / "samples").glob("*.png"))
    assert grids and (run / "checkpoints" / "last.ckpt").is_file()
    from PIL import Image

    assert Image.open(grids[0]).size[0] < 2 * 2 * 30  # two image columns (m1, m0), no unconditional half


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"heads": {"label": {"kind": "label", "position": "middle", "num_classes": 10}}}, "position"),
        ({"aggregate": {"label": {"kind": "pretrained", "num_classes": 10}}}, "kind"),
        ({"aggregate": {"label": {"kind": "embedding", "num_classes": 10, "weight": {"class_path": "decoders.diffusion.aggregation.Cosine"}}}},
         "Cosine"),
        ({"heads": {"digit": {"kind": "label", "num_classes": 10}}}, "the model has modality 'digit', which the data (PolyDigitsDataModule) does not have"),
        ({"heads": {"label": {"kind": "label", "num_classes": 7}}}, "label head of 'label' needs a label with 7 classes; the data has label [] with 10 classes"),
    ],
)
def test_bad_mt_configuration_fails_before_training(patch, message, tmp_path, capsys):
    decoder = {**MT, "init_args": {**MT["init_args"], **patch}}
    path, run = write_config(tmp_path, joint_config(decoder))
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (run / "checkpoints").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parents[2] / "experiments" / "polydigits" / "mt").glob("*.yaml")))
def test_every_shipped_mt_config_builds(name):
    """Each MT-Diffusion study config builds its model and data (a setting the decoder refuses, such as the null path
    without condition dropout, would fail here), and the data has every modality the model names."""
    import yaml

    from diffmvae.store.build import build_run

    config = yaml.safe_load((Path(__file__).parents[2] / "experiments" / "polydigits" / "mt" / f"{name}.yaml").read_text())
    module, data = build_run(config, name)
    decoder = module.model.decoders["joint"]
    decoder.check_specs(data.specs)
    if name == "image_label_null":
        assert decoder.cond_dropout > 0 and decoder.unconditional == "dropped" and decoder.aggregate["label"].kind == "structured"
    if name == "image_label_null_v":  # one change against image_label_null, so its row reads as that change alone
        other = yaml.safe_load((Path(__file__).parents[2] / "experiments" / "polydigits" / "mt" / "image_label_null.yaml").read_text())
        for c in (config, other):
            c["trainer"].pop("default_root_dir")
            c["model"]["init_args"]["model"]["init_args"]["decoder"]["init_args"].pop("prediction")
        assert decoder.prediction == "v" and config == other
