"""Experiment pipelines (diffmvae.pipeline): config surgery, resumable stages, the report, and each data set's own
pipeline run end to end at a tiny size on tiny files in its release layout."""

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from release_layouts import make_celebamask, make_cub

from diffmvae.commands.main import main
from diffmvae.io import DiffMVAEError
from diffmvae.pipeline.run import run_pipeline, stages
from diffmvae.pipeline.spec import keep_modalities, load_pipeline, relocate, set_key, stage_marker, warm_started

ROOT = Path(__file__).resolve().parents[2]

# Every model of a paper-scale config shrunk to a few thousand parameters (keys set anywhere in the fit configs).
TINY = {
    "**.latent_dim": 4, "**.image_size": 16, "**.channels": [4, 4], "**.hidden_dim": 8, "**.hidden": [8], "**.unet_channels": [8, 8],
    "**.emb_dim": 8, "**.attention_levels": [], "**.mean_channels": [4, 4], "**.mean_hidden": 8, "**.steps": 2, "**.num_workers": 0,
    "**.batch_size": 2, "trainer.max_steps": 4, "trainer.max_epochs": None, "trainer.precision": "32-true", "trainer.accelerator": "cpu",
    "trainer.log_every_n_steps": 1, "trainer.enable_progress_bar": False, "trainer.check_val_every_n_epoch": 1,
}
TINY_PRIOR = ["--prior.channels=[8,8]", "--prior.emb_dim=8", "--prior.attention=false", "--prior.sample_steps=2", "--fit.steps=3",
              "--fit.batch_size=4", "--fit.warmup_steps=1"]


def in_process(calls=None, fail_at=None):
    """A launcher running `diffmvae ARGV` in this process (the CLI's subprocess costs seconds of imports per stage)."""
    def launch(argv):
        if calls is not None:
            calls.append(list(argv))
        if fail_at is not None and fail_at(argv):
            return 1
        return main(list(argv))
    return launch


def tiny(spec, **sets):
    spec.overrides.update({**TINY, **sets})
    spec.prior_args = tuple(TINY_PRIOR)
    spec.evaluate["args"] = (*spec.evaluate["args"], "--probe_train", "8")
    return spec


@pytest.mark.parametrize("path", sorted(ROOT.glob("experiments/*/pipeline*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_pipeline_file_loads(path, monkeypatch):
    """Each pipeline the docs point to reads and checks (its fit and prior configs exist, no unknown keys), as
    `diffmvae pipeline --config` would from the repository root."""
    monkeypatch.chdir(ROOT)
    spec = load_pipeline(path)
    assert spec.models and all(m.config.is_file() for m in spec.models.values())


def test_set_key_dotted_and_anywhere():
    cfg = {"a": {"b": {"c": 1}}, "enc": [{"latent_dim": 3}, {"x": {"latent_dim": 5}}]}
    assert set_key(cfg, "a.b.c", 2) == 1 and cfg["a"]["b"]["c"] == 2
    assert set_key(cfg, "a.zz.c", 2) == 0
    assert set_key(cfg, "**.latent_dim", 8) == 2 and cfg["enc"][0]["latent_dim"] == cfg["enc"][1]["x"]["latent_dim"] == 8


def test_config_surgery_keep_warm_start_relocate(tmp_path):
    cfg = yaml.safe_load((ROOT / "experiments/polydigits/diffmvae_star.yaml").read_text())
    kept = keep_modalities(cfg, ["m0", "m2"])
    vae = kept["model"]["init_args"]["model"]["init_args"]
    assert list(vae["encoders"]) == ["m0", "m2"] and vae["decoders"]["images"]["init_args"]["modalities"] == ["m0", "m2"]
    assert kept["data"]["init_args"]["keep"] == ["m0", "m2"] and len(cfg["model"]["init_args"]["model"]["init_args"]["encoders"]) == 5
    joint = warm_started(cfg, tmp_path / "a.ckpt")  # the paper config trains jointly: the warm start only initialises
    start = {"class_path": "diffmvae.training.WarmStart", "init_args": {"ckpt": str(tmp_path / "a.ckpt")}}
    assert joint["trainer"]["callbacks"][0] == start and joint["trainer"]["max_steps"] == cfg["trainer"]["max_steps"] == 3200
    assert not any(c["class_path"].endswith("FeedForwardWarmup") for c in joint["trainer"]["callbacks"])
    staged = copy.deepcopy(cfg)
    staged["trainer"]["callbacks"].append({"class_path": "diffmvae.training.FeedForwardWarmup", "init_args": {"steps": 2000, "freeze": ["encoders"]}})
    warm = warm_started(staged, tmp_path / "a.ckpt")  # a staged config: the warm-up is what the warm start already trained
    callbacks = warm["trainer"]["callbacks"]
    assert callbacks[0] == start
    warmup = next(c for c in callbacks if c["class_path"].endswith("FeedForwardWarmup"))
    assert warmup["init_args"] == {"steps": 0, "freeze": ["encoders"]} and warm["trainer"]["max_steps"] == 3200 - 2000
    moved = relocate(cfg, tmp_path / "out" / "run")  # the paper config names no folder but its root: fit derives the rest
    checkpoint = next(c for c in moved["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))
    assert moved["trainer"]["default_root_dir"] == str(tmp_path / "out" / "run") and "logger" not in moved["trainer"]
    assert "dirpath" not in checkpoint["init_args"]
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "x", "version": ""}}
    next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))["init_args"]["dirpath"] = "runs/x/checkpoints"
    moved = relocate(cfg, tmp_path / "out" / "run")  # folders a config names itself move too
    assert moved["trainer"]["logger"]["init_args"] == {"save_dir": str(tmp_path / "out"), "name": "run", "version": ""}
    assert next(c for c in moved["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))["init_args"]["dirpath"] == str(tmp_path / "out/run/checkpoints")


@pytest.mark.parametrize("text, message", [
    ("out: x\nmodels: {a: {config: nowhere.yaml}}\n", "models.a.config: .*nowhere.yaml does not exist"),
    ("out: x\nmodels: {a: {config: experiments/polydigits/mopoe.yaml, warm_start: b}}\n", "warm_start names 'b'"),
    ("out: x\nmodels: {a: {config: experiments/polydigits/mopoe.yaml}}\nsweep: {name: M}\n", "'sweep' must be"),
    ("out: x\nmodel: {}\n", "unknown key 'model'"),
    ("out: x\nmodels: {a: {config: experiments/polydigits/mopoe.yaml}}\npriors: [flat]\n", "priors must be among score, gaussian"),
])
def test_bad_pipeline_files(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(DiffMVAEError, match=message):
        load_pipeline(path)


@pytest.mark.slow
def test_polydigits_pipeline_resumes_stage_by_stage(tmp_path, monkeypatch):
    """The PolyDigits pipeline (the Fig. 7 sweep, cut to M = 2, 3): a stage that fails stops the run with one line;
    running again skips every finished stage; the report has one row per run and prior."""
    monkeypatch.chdir(ROOT)
    spec = load_pipeline(ROOT / "experiments/polydigits/pipeline.yaml", out=str(tmp_path / "out"))
    spec.sweep = {k: v for k, v in spec.sweep.items() if k in (2, 3)}
    tiny(spec, **{"data.init_args.train_length": 16, "**.image_size": 28, "**.channels": [4, 4]})
    spec.models["mopoe"] = spec.models["mopoe"].__class__(**{**spec.models["mopoe"].__dict__, "args": ()})
    spec.models["diffmvae_star"] = spec.models["diffmvae_star"].__class__(**{**spec.models["diffmvae_star"].__dict__, "args": ("--trainer.max_steps=2",)})
    spec.evaluate.update(n_samples=6)
    monkeypatch.chdir(tmp_path)  # classifier caches land under tmp_path/runs
    calls = []
    with pytest.raises(DiffMVAEError, match="pipeline stage diffmvae_star_M2/prior failed"):
        run_pipeline(spec, launcher=in_process(calls, fail_at=lambda a: a[0] == "prior" and "diffmvae_star_M2" in a[3]))
    done = list(calls)
    assert stage_marker(spec, "mopoe_M2", "unconditional_gaussian").is_file() and not stage_marker(spec, "diffmvae_star_M2", "prior").is_file()
    again = []
    files = run_pipeline(spec, launcher=in_process(again))
    assert again[0][:2] == ["prior", "fit"] and "diffmvae_star_M2" in again[0][3]  # resumed at the failed stage
    assert len(done) + len(again) - 1 == len(stages(spec))
    # The derived Diff-MVAE* config starts from mopoe's weights and has its encoders fixed from step 0.
    derived = yaml.safe_load((tmp_path / "out/configs/diffmvae_star_M3.yaml").read_text())
    assert derived["trainer"]["callbacks"][0]["init_args"]["ckpt"].endswith("mopoe_M3/checkpoints/last.ckpt")
    assert derived["data"]["init_args"]["keep"] == ["m0", "m1", "m2"]
    table = pd.read_csv(files[0])
    assert len(table) == 8 and set(table["prior"]) == {"score", "gaussian"} and set(table["M"]) == {2, 3}
    assert table[table["prior"] == "score"]["coherence_k1"].notna().all() and table["fd_unconditional"].notna().all()
    assert (files[2]).stat().st_size > 10_000  # plots.png
    assert run_pipeline(spec, launcher=in_process(fail_at=lambda a: True)) == files  # nothing left to run


def run_paper_pipeline(dataset, data, tmp_path, monkeypatch, **sets):
    """Run experiments/<dataset>/pipeline.yaml at a tiny size on the tiny release copy at ``data``: its table has a row
    per model (MoPoE, Diff-MVAE, Diff-MVAE*) and prior; returns the score-prior rows."""
    monkeypatch.chdir(ROOT)
    spec = tiny(load_pipeline(ROOT / f"experiments/{dataset}/pipeline.yaml", out=str(tmp_path / "out")), **sets)
    spec.overrides["data.init_args.root"] = str(data)  # what `diffmvae pipeline --data_root DATA` sets
    monkeypatch.chdir(tmp_path)  # classifier caches land under tmp_path/runs
    table = pd.read_csv(run_pipeline(spec, launcher=in_process())[0])
    assert set(table["model"]) == {"mopoe", "diffmvae", "diffmvae_star"} and len(table) == 6
    return table[table["prior"] == "score"]


@pytest.mark.slow
def test_celebamask_pipeline_end_to_end(tmp_path, monkeypatch):
    data = tmp_path / "CelebAMask-HQ"
    make_celebamask(data, n=12)
    scored = run_paper_pipeline("celebamask", data, tmp_path, monkeypatch)
    for column in ("f1_k1", "f1_k2", "mask_f1_k1", "mask_iou_k1", "coherence_unconditional"):  # fractions
        assert scored[column].between(0, 1).all(), column
    assert (scored["fd_k1"] >= 0).all() and np.isfinite(scored["fd_k1"]).all()  # a distance
    summary = json.loads((tmp_path / "out/diffmvae_star/evaluate/metrics.json").read_text())
    assert summary["latent_probe"] == {} and set(summary["mask"]) == {"f1", "iou"}
    assert max(p.name for p in (tmp_path / "out/mopoe/samples").iterdir()).startswith("epoch_")  # grids of image and mask


@pytest.mark.slow
def test_cub_pipeline_end_to_end(tmp_path, monkeypatch):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    data = tmp_path / "CUB_200_2011"
    make_cub(data, classes=3, per_class=4)
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=40)).save_pretrained(tmp_path / "bert")
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=40)).save_pretrained(tmp_path / "gpt2")
    vae = "model.init_args.model.init_args"
    scored = run_paper_pipeline("cub", data, tmp_path, monkeypatch, **{
        "data.init_args.tokenizer": None, "data.init_args.encoder_tokenizer": None, "data.init_args.vocab_size": 64,
        "data.init_args.val_fraction": 0.34, f"{vae}.encoders.text.init_args.pretrained": str(tmp_path / "bert"),
        f"{vae}.decoders.text.init_args.pretrained": str(tmp_path / "gpt2"),
        f"{vae}.decoders.text.init_args.bos_id": 2, f"{vae}.decoders.text.init_args.eos_id": 3, f"{vae}.decoders.text.init_args.pad_id": 0})
    assert scored["coherence_k1"].between(0, 1).all() and scored["probe_k2"].between(0, 1).all() and scored["fd_k1"].notna().all()
    summary = json.loads((tmp_path / "out/diffmvae_star/evaluate/metrics.json").read_text())
    assert set(summary["text_nll_per_token"]) == {"text"} and "text" in summary["classifier_accuracy"]


@pytest.mark.slow
def test_polymnist_pipeline_end_to_end(tmp_path, monkeypatch):
    """The PolyMNIST pipeline (PolyDigits' configs on the published folder layout), its Fig. 7 sweep cut to M = 2, 3."""
    from tiny_run import make_polymnist

    make_polymnist(tmp_path / "PolyMNIST", n_train=24, n_test=6, num_modalities=3)
    monkeypatch.chdir(ROOT)
    spec = load_pipeline(ROOT / "experiments/polymnist/pipeline.yaml", out=str(tmp_path / "out"))
    spec.sweep = {k: v for k, v in spec.sweep.items() if k in (2, 3)}
    tiny(spec, **{"data.init_args.root": str(tmp_path / "PolyMNIST"), "data.init_args.num_modalities": 3, "**.image_size": 28})
    for name, model in spec.models.items():
        spec.models[name] = model.__class__(**{**model.__dict__, "args": ()})
    spec.evaluate.update(n_samples=6)
    monkeypatch.chdir(tmp_path)
    table = pd.read_csv(run_pipeline(spec, launcher=in_process())[0])
    assert len(table) == 8 and set(table["M"]) == {2, 3} and table["fd_unconditional"].notna().all()
    derived = yaml.safe_load((tmp_path / "out/configs/mopoe_M2.yaml").read_text())
    assert derived["data"]["class_path"] == "diffmvae.data.PolyMNISTDataModule" and derived["data"]["init_args"]["keep"] == ["m0", "m1"]


def png_width(path):
    return int.from_bytes(Path(path).read_bytes()[16:20], "big")  # the IHDR chunk's width field


def test_report_plots_a_column_per_feature_space(tmp_path):
    """The report's figure has a column per metric the table holds: coherence, the judges' FD and, when the
    evaluations computed it, the pixel-PCA FD, unconditional (top) and conditional (bottom)."""
    from diffmvae.pipeline.report import _plot

    rows = [{"run": f"{m}_M{M}", "model": m, "M": M, "prior": p, "coherence_unconditional": 0.5, "fd_unconditional": 90.0 + M,
             "fd_pca_unconditional": 3.0 + M, "coherence_k1": 0.7, "fd_k1": 80.0, "fd_pca_k1": 4.0}
            for m in ("mopoe", "diffmvae_star") for M in (2, 3) for p in ("score", "gaussian")]
    both, judges_only = tmp_path / "both.png", tmp_path / "judges.png"
    _plot(pd.DataFrame(rows), "M", both)
    _plot(pd.DataFrame(rows).drop(columns=["fd_pca_unconditional", "fd_pca_k1"]), "M", judges_only)
    assert png_width(both) == 3 * 4 * 110 and png_width(judges_only) == 2 * 4 * 110
    one_m = pd.DataFrame(rows).query("M == 2").drop(columns=["M"])
    no_pca_yet = one_m.assign(fd_pca_unconditional=float("nan")).drop(columns=["fd_pca_k1"])
    _plot(no_pca_yet, None, tmp_path / "bars.png")  # no sweep: bars; metrics that are all missing get no column
    assert png_width(tmp_path / "bars.png") == 2 * 4 * 110
