"""Model folders (`diffmvae export`): safetensors weights, a YAML config, a model card; loaded wherever a checkpoint is,
with the same samples; no pickle; bad folders refused in one line. And the TensorBoard / MLflow loggers."""

import json
import struct

import numpy as np
import pytest
import yaml
from tiny_run import copy_config, write_config

from diffmvae.commands.main import main
from diffmvae.store.load import load_run

PRIOR_ARGS = ["--prior.channels", "[8,8]", "--prior.emb_dim", "8", "--fit.steps", "3", "--fit.batch_size", "8",
              "--fit.statistics_samples", "32", "--fit.warmup_steps", "1", "--prior.sample_steps", "3"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    path, run = write_config(tmp, copy_config())
    assert main(["fit", "--config", str(path)]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["prior", "fit", "--ckpt", str(ckpt), *PRIOR_ARGS]) == 0
    evaluation = tmp / "eval"
    evaluation.mkdir()
    (evaluation / "metrics.md").write_text("| k | coherence |\n|---|---|\n| 1 | 0.123 |\n")
    folder = tmp / "tiny-mopoe"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(folder), "--evaluation", str(evaluation)]) == 0
    return ckpt, folder


def test_folder_layout_holds_no_pickle(exported):
    _, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.yaml", "model.safetensors", "prior.safetensors"]
    for name in ("model.safetensors", "prior.safetensors"):
        # safetensors: an 8-byte header length, a JSON header, then the tensors' raw bytes, which its offsets tile
        # exactly; so nothing else (a pickle, a torch zip) can be in the file
        raw = (folder / name).read_bytes()
        length = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + length])
        spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
        assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - length
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"]["class_path"] == "diffmvae.TrainingModule" and config["trained"]["global_step"] == 4
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffmvae") and "| 1 | 0.123 |" in card and "modalities: m0, m1, m2" in card
    assert "prior.safetensors" in card and "PolyDigitsDataModule(" in card


@pytest.mark.parametrize("given", ["m0", "none"])
def test_folder_gives_the_same_samples_as_the_checkpoint(exported, tmp_path, given):
    ckpt, folder = exported
    for name, source in (("ckpt", ckpt), ("folder", folder)):
        assert main(["sample", "--ckpt", str(source), "--given", given, "--n", "4", "--out", str(tmp_path / name), "--seed", "3"]) == 0
    a, b = np.load(tmp_path / "ckpt" / "samples.npz"), np.load(tmp_path / "folder" / "samples.npz")
    if given == "none":
        assert str(a["prior"]) == str(b["prior"]) == "score"
    for m in ("m0", "m1", "m2"):
        np.testing.assert_array_equal(a[m], b[m])


def test_folder_loads_with_the_ema_weights(exported):
    ckpt, folder = exported
    from_ckpt, from_folder = load_run(ckpt).module.model.state_dict(), load_run(folder).module.model.state_dict()
    assert from_ckpt.keys() == from_folder.keys()
    assert all(np.array_equal(from_ckpt[k].numpy(), from_folder[k].numpy()) for k in from_ckpt)
    raw = load_run(ckpt, use_ema=False).module.model.state_dict()
    assert any(not np.array_equal(raw[k].numpy(), from_folder[k].numpy()) for k in raw if raw[k].is_floating_point())


def test_an_existing_folder_is_kept_without_overwrite(exported, capsys):
    ckpt, folder = exported
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["export", "--ckpt", str(ckpt), "--out", str(folder)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def copy_folder(folder, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-7]), "does not match the sha256"),
        (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 4), "does not match the sha256"),
        (lambda f: (f / "config.yaml").unlink(), "has no config.yaml"),
        (lambda f: (f / "model.safetensors").unlink(), "has no model.safetensors"),
        (lambda f: (f / "config.yaml").write_text((f / "config.yaml").read_text().replace("diffmvae.data.PolyDigitsDataModule", "os.system")),
         "class_path 'os.system' is outside the packages"),
        (lambda f: (f / "config.yaml").write_text("model: [unclosed"), "is not valid YAML"),
    ],
)
def test_a_damaged_folder_is_refused_in_one_line(exported, tmp_path, capsys, damage, message):
    folder = copy_folder(exported[1], tmp_path)
    damage(folder)
    assert main(["sample", "--ckpt", str(folder), "--given", "m0", "--n", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_truncated_safetensors_file_is_one_line_even_without_a_checksum(exported, tmp_path, capsys):
    folder = copy_folder(exported[1], tmp_path)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    del config["files"]
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
    assert main(["sample", "--ckpt", str(folder), "--given", "m0", "--n", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a readable safetensors file" in err, err


def test_prior_fit_on_a_folder_writes_a_safetensors_prior_there(exported, tmp_path):
    folder = copy_folder(exported[1], tmp_path)
    (folder / "prior.safetensors").unlink()
    assert main(["prior", "fit", "--ckpt", str(folder), *PRIOR_ARGS]) == 0
    assert (folder / "prior.safetensors").is_file() and not list(folder.glob("*.ckpt"))
    assert main(["sample", "--ckpt", str(folder), "--given", "none", "--n", "2", "--out", str(tmp_path / "out"), "--prior", "score"]) == 0


def read_tensorboard_tags(directory):
    """Scalar and image tags of TensorBoard event files (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    scalars, images = set(), set()
    for path in directory.rglob("events.out.tfevents.*"):
        raw = path.read_bytes()
        i = 0
        while i < len(raw):
            (length,) = struct.unpack("<Q", raw[i : i + 8])
            event = event_pb2.Event.FromString(raw[i + 12 : i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                (images if value.HasField("image") else scalars).add(value.tag)
    return scalars, images


def test_tensorboard_logger_gets_every_elbo_term_and_the_grids(tmp_path):
    path, run = write_config(tmp_path, copy_config())
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(tmp_path / "tb"), "name": "tiny"}}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path)]) == 0
    scalars, images = read_tensorboard_tags(tmp_path / "tb")
    assert {"train/loss", "train/kl", "train/m0/nll", "train/m2/nll", "val/loss", "val/m1/nll"} <= scalars, scalars
    assert images == {"samples"}


def test_mlflow_logger_gets_every_elbo_term_and_the_grids(tmp_path):
    path, run = write_config(tmp_path, copy_config())
    cfg = yaml.safe_load(path.read_text())
    store = tmp_path / "mlruns"
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.MLFlowLogger",
                                "init_args": {"experiment_name": "tiny", "tracking_uri": f"file:{store}"}}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path)]) == 0
    runs = [p for p in store.glob("*/*") if (p / "metrics").is_dir()]
    assert len(runs) == 1
    metrics = {str(p.relative_to(runs[0] / "metrics")) for p in (runs[0] / "metrics").rglob("*") if p.is_file()}
    assert {"train/loss", "train/kl", "train/m0/nll", "val/loss", "val/m1/nll"} <= metrics, metrics
    assert list((runs[0] / "artifacts").rglob("samples*.png"))
