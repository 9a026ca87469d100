"""The README's bad-input table, one test per row: each input ends with one `diffmvae: error: ...` line (no traceback),
exit status 2, and every file the user had is byte for byte as it was (outputs are not created).

The rows are also checked against docs/bad-input.md, so the table there and these tests cannot drift apart.
"""

import hashlib
import pickle
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import yaml
from faulty import file_size_limit
from release_layouts import make_celebamask, make_cub
from tiny_run import copy_config, make_polymnist, write_config

from diffmvae.commands.main import main

PRIOR_ARGS = ["--prior.channels", "[8,8]", "--prior.emb_dim", "8", "--fit.steps", "3", "--fit.batch_size", "8",
              "--fit.statistics_samples", "32", "--fit.warmup_steps", "1", "--prior.sample_steps", "3"]
BAD_INPUT_PAGE = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"


class Marker:
    """Unpickling this writes a marker file: what a crafted checkpoint would do if it were unpickled unsafely."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace with what a user has: a config, a trained run, its score prior, sample outputs, a second run
    with its own prior, a PolyMNIST folder, a model folder and some bad files."""
    root = tmp_path_factory.mktemp("bad")
    cfg_path, run = write_config(root / "a", copy_config())
    assert main(["fit", "--config", str(cfg_path)]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["prior", "fit", "--ckpt", str(ckpt), *PRIOR_ARGS]) == 0
    other_cfg, other = write_config(root / "b", {**copy_config(), "seed_everything": 1})
    assert main(["fit", "--config", str(other_cfg)]) == 0
    assert main(["sample", "--ckpt", str(ckpt), "--given", "m0", "--n", "2", "--out", str(root / "samples")]) == 0
    assert main(["export", "--ckpt", str(ckpt), "--out", str(root / "folder")]) == 0
    (root / "text.ckpt").write_text("not a checkpoint")
    (root / "truncated.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    torch.save({"state_dict": {}, "payload": Marker(root / "marker.txt")}, root / "evil.ckpt")
    with open(root / "evil_pickle.ckpt", "wb") as f:
        pickle.dump(Marker(root / "marker.txt"), f)
    make_polymnist(root / "polymnist", num_modalities=3)
    sorted((root / "polymnist" / "train" / "m1").iterdir())[0].rename(root / "polymnist" / "train" / "m1" / "zero.png")
    bad_digits = make_polymnist(root / "polymnist_disagree", num_modalities=3)
    first = sorted((bad_digits / "train" / "m1").iterdir())[0]
    index, digit, _ = first.name.split(".")
    first.rename(first.with_name(f"{index}.{(int(digit) + 1) % 10}.png"))
    (root / "config_bad_yaml.yaml").write_text("model: [unclosed")
    rows = make_cub(root / "cub")
    (root / "cub" / "text_c10" / rows[2][0]).with_suffix(".txt").write_text("one caption\n" * 9)
    make_celebamask(root / "celeba")
    attributes = root / "celeba" / "CelebAMask-HQ-attribute-anno.txt"
    attributes.write_text(attributes.read_text().replace("Smiling", "Smile"))
    for name, data in (("cub", "CUBDataModule"), ("celeba", "CelebAMaskHQDataModule")):
        (root / f"classifiers_{name}.yaml").write_text(yaml.safe_dump({"data": {"class_path": f"diffmvae.data.{data}", "init_args": {
            "root": str(root / name), "image_size": 16}}, "epochs": 1}))
    (root / "pipeline_bad_key.yaml").write_text("out: x\nmodel: {}\n")
    (root / "pipeline_missing_config.yaml").write_text("out: x\nmodels: {a: {config: nowhere/fit.yaml}}\n")
    return {"root": root, "cfg": cfg_path, "ckpt": ckpt, "other": other / "checkpoints" / "last.ckpt", "run": run}


def tiny_config(ws, edit):
    cfg = yaml.safe_load(ws["cfg"].read_text())
    edit(cfg)
    path = ws["root"] / f"edited_{hashlib.sha1(repr(cfg).encode()).hexdigest()[:8]}.yaml"
    cfg["trainer"]["default_root_dir"] = str(ws["root"] / "new_run")
    cfg["trainer"]["callbacks"][-1]["init_args"]["dirpath"] = str(ws["root"] / "new_run" / "checkpoints")
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(ws["root"] / "new_logs")
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def set_path(cfg, keys, value):
    node = cfg
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value


def polymnist_data(root):
    return {"class_path": "diffmvae.data.PolyMNISTDataModule", "init_args": {"root": str(root), "num_modalities": 3}}


# (id, argv given the workspace, the message's key part): the README's table lists the same rows.
ROWS = [
    ("config-unknown-key", lambda w: ["fit", "--config", str(w["cfg"]), "--model.init_args.betaa", "2"], "betaa"),
    ("config-wrong-type", lambda w: ["fit", "--config", str(w["cfg"]), "--trainer.max_steps", "many"], "max_steps"),
    ("config-missing-file", lambda w: ["fit", "--config", str(w["root"] / "nope.yaml")], "nope.yaml"),
    ("config-invalid-yaml", lambda w: ["fit", "--config", str(w["root"] / "config_bad_yaml.yaml")], "config_bad_yaml.yaml"),
    ("config-unknown-class", lambda w: ["fit", "--config", tiny_config(w, lambda c: set_path(
        c, ["model", "init_args", "model", "init_args", "decoders", "m1", "class_path"], "decoders.NoSuchDecoder"))], "NoSuchDecoder"),
    ("config-modality-not-in-data", lambda w: ["fit", "--config", tiny_config(w, lambda c: set_path(
        c, ["data", "init_args", "num_modalities"], 2))], "the model has modality 'm2', which the data (PolyDigitsDataModule) does not have"),
    ("config-bad-data-value", lambda w: ["fit", "--config", tiny_config(w, lambda c: set_path(c, ["data", "init_args", "num_modalities"], 11))],
     "num_modalities must be in 1..10, got 11"),
    ("fit-existing-run", lambda w: ["fit", "--config", str(w["cfg"]), "--trainer.logger.save_dir", str(w["root"] / "other_logs")],
     "already holds a run; resume it with --ckpt_path"),
    ("fit-logger-folder-of-another-run", lambda w: ["fit", "--config", str(w["cfg"]), "--trainer.default_root_dir", str(w["root"] / "new_root")],
     "metrics.csv already exists (the logger's folder belongs to another run)"),
    ("data-polymnist-missing-folder", lambda w: ["fit", "--config", tiny_config(w, lambda c: c.update(data=polymnist_data(w["root"] / "nowhere")))],
     "nowhere"),
    ("data-polymnist-misnamed-file", lambda w: ["fit", "--config", tiny_config(w, lambda c: c.update(data=polymnist_data(w["root"] / "polymnist")))],
     "zero.png"),
    ("data-polymnist-digits-disagree", lambda w: ["fit", "--config", tiny_config(
        w, lambda c: c.update(data=polymnist_data(w["root"] / "polymnist_disagree")))], "disagree"),
    ("ckpt-missing", lambda w: ["sample", "--ckpt", str(w["root"] / "nope.ckpt"), "--out", str(w["root"] / "out")], "nope.ckpt does not exist"),
    ("ckpt-not-a-checkpoint", lambda w: ["sample", "--ckpt", str(w["root"] / "text.ckpt"), "--out", str(w["root"] / "out")],
     "is not a readable checkpoint"),
    ("ckpt-truncated", lambda w: ["sample", "--ckpt", str(w["root"] / "truncated.ckpt"), "--out", str(w["root"] / "out")],
     "is not a readable checkpoint"),
    ("ckpt-malicious-pickle", lambda w: ["sample", "--ckpt", str(w["root"] / "evil.ckpt"), "--out", str(w["root"] / "out")],
     "is not a readable checkpoint"),
    ("ckpt-plain-pickle", lambda w: ["evaluate", "--ckpt", str(w["root"] / "evil_pickle.ckpt"), "--out", str(w["root"] / "out")],
     "is not a readable checkpoint"),
    ("sample-unknown-modality", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "m9", "--out", str(w["root"] / "out")],
     "unknown modality 'm9' in --given"),
    ("sample-nothing-to-generate", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "m0,m1,m2", "--out", str(w["root"] / "out")],
     "nothing is left to generate"),
    ("sample-n-zero", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--n", "0", "--out", str(w["root"] / "out")], "--n must be >= 1, got 0"),
    ("sample-steps-without-diffusion", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "m0", "--steps", "5", "--out", str(w["root"] / "out")],
     "--steps apply to diffusion decoders, and this model has none"),
    ("sample-output-is-a-file", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "m0", "--out", str(w["root"] / "text.ckpt")],
     "text.ckpt"),
    ("prior-of-another-checkpoint", lambda w: ["sample", "--ckpt", str(w["other"]), "--given", "none", "--prior_ckpt",
                                               str(w["run"] / "checkpoints" / "last.prior.ckpt"), "--out", str(w["root"] / "out")],
     "was fitted to another model checkpoint"),
    ("prior-missing", lambda w: ["sample", "--ckpt", str(w["other"]), "--given", "none", "--prior", "score", "--out", str(w["root"] / "out")],
     "no score prior at"),
    ("prior-not-a-prior", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "none", "--prior_ckpt", str(w["ckpt"]),
                                     "--out", str(w["root"] / "out")], "is not a latent-prior checkpoint"),
    ("prior-fit-existing", lambda w: ["prior", "fit", "--ckpt", str(w["ckpt"]), *PRIOR_ARGS], "already exists; pass --overwrite to replace it"),
    ("prior-fit-onto-the-checkpoint", lambda w: ["prior", "fit", "--ckpt", str(w["ckpt"]), "--out", str(w["ckpt"]), *PRIOR_ARGS],
     "is the model checkpoint itself"),
    ("prior-fit-bad-key", lambda w: ["prior", "fit", "--ckpt", str(w["ckpt"]), "--prior.chanels", "[8]"], "chanels"),
    ("evaluate-names-mismatch", lambda w: ["evaluate", "--ckpt", str(w["ckpt"]), "--names", "a,b", "--out", str(w["root"] / "out")],
     "--names needs 1 distinct names"),
    ("evaluate-bad-classifier-file", lambda w: ["evaluate", "--ckpt", str(w["ckpt"]), "--classifiers", str(w["root"] / "text.ckpt"),
                                                "--out", str(w["root"] / "out")], "text.ckpt"),
    ("export-existing-folder", lambda w: ["export", "--ckpt", str(w["ckpt"]), "--out", str(w["root"] / "folder")], "already exists; pass --overwrite"),
    ("export-of-a-folder", lambda w: ["export", "--ckpt", str(w["root"] / "folder"), "--out", str(w["root"] / "out")], "is already a model folder"),
    ("compose-unknown-rule", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "m0", "--compose", "every", "--out", str(w["root"] / "out")],
     "unknown modality 'every' in --compose"),
    ("compose-weights-mismatch", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "m0,m1", "--compose", "m0;m1", "--weights", "1,2,3",
                                            "--out", str(w["root"] / "out")], "2 composition sources need 1 or 2 weights"),
    ("compose-feed-forward-model", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "m0", "--compose", "each", "--out", str(w["root"] / "out")],
     "--compose needs a diffusion decoder for a generated modality"),
    ("unite-missing-config", lambda w: ["unite", "--config", str(w["root"] / "nope.yaml"), "--out", str(w["root"] / "out")],
     "nope.yaml does not exist"),
    ("unite-reliabilities", lambda w: ["unite", "--ckpt", str(w["ckpt"]), "--ckpt", str(w["other"]), "--target", "m1", "--given", "m0",
                                       "--given", "m2", "--reliabilities", "0.5,0.6", "--out", str(w["root"] / "out")], "reliabilities must sum to 1"),
    ("unite-feed-forward-target", lambda w: ["unite", "--ckpt", str(w["ckpt"]), "--target", "m1", "--given", "m0", "--out", str(w["root"] / "out")],
     "generates 'm1' with a ConvImageDecoder, not a diffusion decoder"),
    ("data-cub-too-few-captions", lambda w: ["classifiers", "fit", "--config", str(w["root"] / "classifiers_cub.yaml"), "--out", str(w["root"] / "c.pt")],
     "has 9 captions, expected 10 (captions_per_image)"),
    ("data-celebamask-missing-attribute", lambda w: ["classifiers", "fit", "--config", str(w["root"] / "classifiers_celeba.yaml"),
                                                     "--out", str(w["root"] / "c.pt")], "has no attribute 'Smiling' in its header"),
    ("pipeline-unknown-key", lambda w: ["pipeline", "--config", str(w["root"] / "pipeline_bad_key.yaml")], "unknown key 'model'"),
    ("pipeline-missing-fit-config", lambda w: ["pipeline", "--config", str(w["root"] / "pipeline_missing_config.yaml")],
     "models.a.config: "),
    ("sample-existing-out", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "m0", "--out", str(w["root"] / "samples")],
     "samples already exists; pass --overwrite to replace it"),
    ("evaluate-existing-out", lambda w: ["evaluate", "--ckpt", str(w["ckpt"]), "--out", str(w["root"] / "samples")],
     "samples already exists; pass --overwrite to replace it"),
    ("unite-existing-out", lambda w: ["unite", "--ckpt", str(w["ckpt"]), "--target", "m1", "--given", "m0", "--out", str(w["root"] / "samples")],
     "samples already exists; pass --overwrite to replace it"),
    ("sample-empty-given", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "", "--out", str(w["root"] / "out")],
     "--given is empty; give a value or leave the option out"),
    ("prior-fit-empty-out", lambda w: ["prior", "fit", "--ckpt", str(w["ckpt"]), "--out", "", *PRIOR_ARGS], "--out is empty"),
    ("flag-spelled-with-dashes", lambda w: ["evaluate", "--ckpt", str(w["ckpt"]), "--out", str(w["root"] / "out"), "--max-subsets", "2"],
     "unrecognized arguments: --max-subsets 2 (flags use underscores: --max_subsets)"),
    ("switch-given-a-value", lambda w: ["export", "--ckpt", str(w["ckpt"]), "--out", str(w["root"] / "folder"), "--overwrite", "true"],
     "unrecognized arguments: true"),
    ("data-root-missing-before-lightning", lambda w: ["fit", "--config", tiny_config(w, lambda c: c.update(data={
        "class_path": "diffmvae.data.CUBDataModule", "init_args": {"root": str(w["root"] / "no_cub")}}))],
     "no_cub is not a folder"),
    ("fit-fewer-examples-than-a-batch", lambda w: ["fit", "--config", tiny_config(w, lambda c: c["data"]["init_args"].update(
        train_length=4, batch_size=8))], "the training split has 4 examples, fewer than one batch"),
    ("config-long-parser-message", lambda w: ["fit", "--config", tiny_config(w, lambda c: set_path(
        c, ["model", "init_args", "model", "init_args", "encoders", "m1", "init_args", "channels"], "not a list"))], "channels"),
    ("command-unknown-subcommand", lambda w: ["prior", "train"], "the only prior command is `fit`"),
    ("fit-resume-truncated-checkpoint", lambda w: ["fit", "--config", str(w["cfg"]), "--ckpt_path", str(w["root"] / "truncated.ckpt")],
     "truncated.ckpt is not a readable checkpoint"),
    ("fit-resume-malicious-checkpoint", lambda w: ["fit", "--config", str(w["cfg"]), "--ckpt_path", str(w["root"] / "evil.ckpt")],
     "evil.ckpt is not a readable checkpoint"),
    ("fit-resume-from-a-prior-file", lambda w: ["fit", "--config", str(w["cfg"]), "--ckpt_path", str(w["run"] / "checkpoints" / "last.prior.ckpt")],
     "last.prior.ckpt is not a training checkpoint (a prior or classifier file?)"),
    ("fit-run-dir-under-a-file", lambda w: ["fit", "--config", tiny_config(w, lambda c: None), "--trainer.default_root_dir",
                                            str(w["root"] / "text.ckpt" / "run")], "run cannot be created: "),
    ("sample-out-under-a-file", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "m0", "--out", str(w["root"] / "text.ckpt" / "s")],
     "s cannot be created: "),
    ("prior-fit-out-under-a-file", lambda w: ["prior", "fit", "--ckpt", str(w["ckpt"]), "--out", str(w["root"] / "text.ckpt" / "p.ckpt"),
                                              *PRIOR_ARGS], "the prior's folder"),
    # A full disk (a file-size limit of 2 kB: see faulty.file_size_limit) while writing outputs that exist already.
    ("disk-full-sample", lambda w: ["sample", "--ckpt", str(w["ckpt"]), "--given", "m0", "--n", "2", "--out", str(w["root"] / "samples"),
                                    "--overwrite"],
     "cannot write ", 2048),
    ("disk-full-prior", lambda w: ["prior", "fit", "--ckpt", str(w["ckpt"]), "--overwrite", *PRIOR_ARGS],
     "last.prior.ckpt: File too large (nothing there was replaced)", 2048),
]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_the_table_has_at_least_25_rows():
    assert len(ROWS) >= 25 and len({r[0] for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_and_loses_nothing(ws, capsys, row):
    name, argv, message, *full_disk = row
    argv = argv(ws)
    capsys.readouterr()
    before = snapshot(ws["root"])
    with file_size_limit(full_disk[0]) if full_disk else nullcontext():
        assert main(argv) == 2, name
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    err = err.rsplit("\r", 1)[-1]  # what a terminal shows after a progress bar that was under way
    assert err.startswith("diffmvae: error: "), err
    assert message in err, err
    assert len(err) <= len("diffmvae: error: ") + 300, f"{len(err)} characters: {err}"
    assert not captured.out.strip(), f"{name}: Lightning or the library printed before the error: {captured.out[:200]}"
    after = snapshot(ws["root"])
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"{name} changed or removed {changed}"
    created = [p for p in after if p not in before and not p.startswith("edited_")]
    assert not created, f"{name} created {created}"
    assert not (ws["root"] / "marker.txt").exists(), "a checkpoint was unpickled unsafely"


def test_the_docs_list_every_row():
    text = BAD_INPUT_PAGE.read_text()
    missing = [row[0] for row in ROWS if f"`{row[0]}`" not in text]
    assert not missing, f"docs/bad-input.md lacks {missing}"
