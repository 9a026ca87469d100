"""A model folder needs nothing but itself: a captioned-PolyDigits model whose text networks were loaded from
pretrained folders is exported, moved to an empty directory, and sampled there (from another working directory)
given an image file and given captions from an .npz, with the author's pretrained folders deleted and tokenizer
training forbidden; its samples are the checkpoint's."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from tiny_run import write_config

from diffmvae.commands.main import main
from diffmvae.data import PolyDigitsDataModule

CAPTIONS = Path(__file__).resolve().parents[2] / "experiments/polydigits/captions.yaml"
BERT = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}
GPT2 = {"vocab_size": 64, "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32}


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    tmp = tmp_path_factory.mktemp("portable")
    BertModel(BertConfig(**BERT)).save_pretrained(tmp / "nets" / "bert")
    GPT2LMHeadModel(GPT2Config(**GPT2)).save_pretrained(tmp / "nets" / "gpt2")
    cfg = yaml.safe_load(CAPTIONS.read_text())
    cfg["trainer"].update(max_steps=4, limit_val_batches=1, callbacks=[])
    cfg["data"]["init_args"].update(train_length=64, batch_size=16)
    args = cfg["model"]["init_args"]["model"]["init_args"]
    args["encoders"]["text"]["init_args"].update(config=None, pretrained=str(tmp / "nets" / "bert"))
    args["decoders"]["text"]["init_args"].update(config=None, pretrained=str(tmp / "nets" / "gpt2"))
    path, run = write_config(tmp / "fit", cfg)
    assert main(["fit", "--config", str(path)]) == 0
    image = PolyDigitsDataModule(num_modalities=2).dataset("test")[0]["m0"]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp / "digit.png")
    np.savez(tmp / "captions.npz", text=np.array(["a red three", "the digit seven on blue"]))
    return tmp, run / "checkpoints" / "last.ckpt"


def sample(source, out, *extra):
    assert main(["sample", "--ckpt", str(source), "--seed", "2", "--out", str(out), *extra]) == 0
    with np.load(Path(out) / "samples.npz") as f:
        return {k: f[k] for k in f.files if k != "sampling"}


def test_inputs_are_checked_in_one_line(captioned, tmp_path, capsys):
    tmp, ckpt = captioned
    np.savez(tmp_path / "wrong.npz", m0=np.zeros((2, 3, 14, 14), dtype=np.float32))
    cases = [
        (["--given", "m0", "--inputs", str(tmp_path / "wrong.npz")], "has examples of shape [3, 14, 14]; the model's modality has [3, 28, 28]"),
        (["--given", "m0", "--inputs", str(tmp / "captions.npz")], "--inputs gives no 'm0', which --given observes"),
        (["--given", "text", "--inputs", f"text={tmp / 'digit.png'}"], "image files are read for image modalities"),
        (["--given", "m0", "--inputs", f"m0={tmp_path / 'none.png'}"], "none.png does not exist"),
        (["--inputs", str(tmp / "captions.npz")], "--inputs needs --given"),
    ]
    for extra, message in cases:
        assert main(["sample", "--ckpt", str(ckpt), "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err
    assert not (tmp_path / "o").exists()


def test_a_moved_folder_samples_with_nothing_else(captioned, tmp_path, monkeypatch):
    tmp, ckpt = captioned
    from_image = sample(ckpt, tmp_path / "a", "--given", "m0", "--inputs", f"m0={tmp / 'digit.png'}")
    from_text = sample(ckpt, tmp_path / "b", "--given", "text", "--inputs", str(tmp / "captions.npz"))
    assert from_image["text"].shape == (1,) and from_text["m0"].shape == (2, 3, 28, 28)

    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exported")]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(tmp_path / "exported", elsewhere / "model")
    shutil.copy(tmp / "digit.png", elsewhere / "digit.png")
    shutil.copy(tmp / "captions.npz", elsewhere / "captions.npz")
    shutil.rmtree(tmp / "nets")  # the author's pretrained folders are gone
    config = yaml.safe_load((elsewhere / "model" / "config.yaml").read_text())
    assert str(tmp) not in yaml.safe_dump(config["model"]) + yaml.safe_dump(config["data"])
    assert config["data"]["init_args"]["tokenizer"] == "tokenizer" and (elsewhere / "model" / "tokenizer" / "tokenizer.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("the folder's tokenizer was retrained from the data")

    monkeypatch.setattr("diffmvae.data.text.train_tokenizer", no_training)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    moved_image = sample(elsewhere / "model", "a", "--given", "m0", "--inputs", f"m0={elsewhere / 'digit.png'}")
    moved_text = sample(elsewhere / "model", "b", "--given", "text", "--inputs", str(elsewhere / "captions.npz"))
    assert list(moved_image["text"]) == list(from_image["text"])
    np.testing.assert_array_equal(moved_text["m0"], from_text["m0"])
    np.testing.assert_array_equal(moved_image["m0"], from_image["m0"])  # the image file, read the same way
