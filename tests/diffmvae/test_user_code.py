"""A user's own classes (a data module and a decoder in a module outside the library) work in every command: fit,
classifiers fit, sample, evaluate, prior fit, export and sampling from the exported folder. The run records the
class paths it named; a stored config naming any other outside class is refused before anything is imported."""

import sys

import numpy as np
import pytest
import yaml
from tiny_run import copy_config, vae_args, write_config

from diffmvae.commands.main import main
from diffmvae.io import DiffMVAEError
from diffmvae.store.build import TRUSTED_KEY, build_run
from diffmvae.store.load import load_run
from diffmvae.training.checkpoint_io import read_checkpoint

USER_MODULE = '''
from decoders import ConvImageDecoder
from diffmvae.data import PolyDigitsDataModule

class LabData(PolyDigitsDataModule):
    """The user's data module."""


class LabDecoder(ConvImageDecoder):
    """The user's decoder: a ConvImageDecoder with a marker attribute."""

    lab = True
'''

FOREIGN = '''
from pathlib import Path
Path(__file__).with_name("imported.txt").write_text("imported")
'''

PRIOR_ARGS = ["--prior.channels", "[8,8]", "--prior.emb_dim", "8", "--fit.steps", "3", "--fit.batch_size", "8",
              "--fit.statistics_samples", "32", "--fit.warmup_steps", "1", "--prior.sample_steps", "3"]


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("user")
    (tmp / "code").mkdir()
    (tmp / "code" / "lab_code.py").write_text(USER_MODULE)
    (tmp / "code" / "foreign_code.py").write_text(FOREIGN)
    sys.path.insert(0, str(tmp / "code"))
    cfg = copy_config()
    vae_args(cfg)["decoders"]["m1"] = {**vae_args(cfg)["decoders"]["m1"], "class_path": "lab_code.LabDecoder"}
    cfg["data"]["class_path"] = "lab_code.LabData"
    path, run = write_config(tmp / "fit", cfg)
    assert main(["fit", "--config", str(path)]) == 0
    yield tmp, run / "checkpoints" / "last.ckpt", cfg
    sys.path.remove(str(tmp / "code"))
    sys.modules.pop("lab_code", None)


def test_the_run_records_the_classes_it_named(user_run):
    _, ckpt, _ = user_run
    assert read_checkpoint(ckpt)["diffmvae_config"][TRUSTED_KEY] == ["lab_code.LabData", "lab_code.LabDecoder"]


def test_every_command_loads_the_users_classes(user_run, tmp_path):
    tmp, ckpt, cfg = user_run
    classifiers_cfg = tmp_path / "classifiers.yaml"
    classifiers_cfg.write_text(yaml.safe_dump({"data": cfg["data"], "epochs": 1}))
    judges = tmp_path / "judges.pt"
    assert main(["classifiers", "fit", "--config", str(classifiers_cfg), "--out", str(judges)]) == 0
    assert main(["sample", "--ckpt", str(ckpt), "--given", "m0", "--n", "3", "--out", str(tmp_path / "s")]) == 0
    assert main(["evaluate", "--ckpt", str(ckpt), "--classifiers", str(judges), "--n_samples", "4", "--parts", "conditional",
                 "--max_subsets", "1", "--pca_components", "2", "--pca_train", "8", "--out", str(tmp_path / "e")]) == 0
    assert main(["prior", "fit", "--ckpt", str(ckpt), "--out", str(tmp_path / "p.ckpt"), *PRIOR_ARGS]) == 0
    assert main(["export", "--ckpt", str(ckpt), "--prior_ckpt", str(tmp_path / "p.ckpt"), "--out", str(tmp_path / "folder")]) == 0
    assert yaml.safe_load((tmp_path / "folder" / "config.yaml").read_text())[TRUSTED_KEY] == ["lab_code.LabData", "lab_code.LabDecoder"]
    assert main(["sample", "--ckpt", str(tmp_path / "folder"), "--given", "m0", "--n", "3", "--out", str(tmp_path / "f")]) == 0
    from_ckpt, from_folder = np.load(tmp_path / "s" / "samples.npz"), np.load(tmp_path / "f" / "samples.npz")
    np.testing.assert_array_equal(from_ckpt["m1"], from_folder["m1"])
    folder = load_run(tmp_path / "folder")
    assert type(folder.datamodule).__name__ == "LabData" and type(folder.module.model.decoder_for("m1")).__name__ == "LabDecoder"


def test_a_class_the_run_did_not_name_is_never_imported(user_run):
    tmp, ckpt, _ = user_run
    config = read_checkpoint(ckpt)["diffmvae_config"]
    config["model"]["init_args"]["model"]["init_args"]["decoders"]["m2"]["class_path"] = "foreign_code.Decoder"
    with pytest.raises(DiffMVAEError, match="foreign_code.Decoder' is outside the packages .* not one the run named"):
        build_run(config, "the edited config")
    assert not (tmp / "code" / "imported.txt").exists() and "foreign_code" not in sys.modules
    # trusting it by hand makes jsonargparse import it (and then refuse it: it has no such class)
    with pytest.raises(DiffMVAEError):
        build_run({**config, TRUSTED_KEY: [*config[TRUSTED_KEY], "foreign_code.Decoder"]}, "the edited config")
    assert (tmp / "code" / "imported.txt").exists()
