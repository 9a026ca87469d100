"""Faults while writing: a full disk (simulated with a file-size limit, which makes every write past it fail as a
full disk does) or a folder that cannot be written is one line, and the file that was there stays whole."""

import csv
import io
import os
import pickle
import stat
from pathlib import Path

import lightning as L
import pytest
import torch
from faulty import file_size_limit
from tiny_run import copy_config, write_config

from diffmvae.commands.main import main
from diffmvae.io import FILE_MODE, DiffMVAEError, atomic_write, check_writable, torch_save
from diffmvae.training.checkpoint_io import AtomicCheckpointIO

pytest.importorskip("resource")  # POSIX: the file-size limit stands for a full disk


def test_a_failed_write_keeps_the_old_file_and_names_the_target(tmp_path):
    target = tmp_path / "state.pt"
    torch_save({"w": torch.zeros(3)}, target)
    os.chmod(target, 0o640)
    old = target.read_bytes()
    with file_size_limit(4096), pytest.raises(DiffMVAEError, match=r"cannot write .*state\.pt: File too large"):
        atomic_write(target, lambda tmp: torch_save({"w": torch.zeros(100_000)}, tmp))
    assert target.read_bytes() == old and os.listdir(tmp_path) == ["state.pt"]  # no temporary file left behind
    atomic_write(target, lambda tmp: torch_save({"w": torch.ones(2)}, tmp))
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # a replaced file keeps its permissions
    fresh = atomic_write(tmp_path / "new.pt", lambda tmp: tmp.write_text("x"))
    assert stat.S_IMODE(fresh.stat().st_mode) == FILE_MODE  # not mkstemp's 0600
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))


def test_check_writable_names_the_folder_and_creates_nothing(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DiffMVAEError, match=r"--out .*a_file/run cannot be created: .*a_file is a file"):
        check_writable(tmp_path / "a_file" / "run", "--out")
    check_writable(tmp_path / "new" / "deeper", "--out")
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_the_checkpoint_writer_is_atomic_and_never_unpickles_code(tmp_path):
    """TrainingModule.setup installs AtomicCheckpointIO; it writes beside the target (not in the system's temporary
    folder, from which Lightning's own writer copies across file systems) and reads with weights_only=True."""
    from conftest import tiny_image_vae

    from diffmvae.training.module import TrainingModule

    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    module = TrainingModule(tiny_image_vae())
    module.trainer = trainer
    module.setup("fit")
    writer = trainer.strategy.checkpoint_io
    assert isinstance(writer, AtomicCheckpointIO)
    seen = []
    real_replace = os.replace
    try:
        os.replace = lambda src, dst: (seen.append(Path(src).parent), real_replace(src, dst))[1]
        writer.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "pytorch-lightning_version": L.__version__}, tmp_path / "ck" / "last.ckpt")
    finally:
        os.replace = real_replace
    assert seen == [tmp_path / "ck"]
    assert torch.equal(writer.load_checkpoint(tmp_path / "ck" / "last.ckpt")["state_dict"]["w"], torch.ones(2))
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "prior.ckpt")  # a state dict, but not of a training run
    with pytest.raises(DiffMVAEError, match="is not a training checkpoint"):
        writer.load_checkpoint(tmp_path / "prior.ckpt")

    class Marker:
        def __reduce__(self):
            return (Path.write_text, (tmp_path / "marker.txt", "pwned"))

    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": Marker()}, f)
    with pytest.raises(DiffMVAEError, match="is not a readable checkpoint"):
        writer.load_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "marker.txt").exists()


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_good_one(tmp_path, capsys):
    """A resumed run whose next last.ckpt cannot be written: one line naming it, exit 2, the previous last.ckpt byte
    for byte as it was, no temporary file left, and the run's metrics history back in metrics.csv."""
    cfg = copy_config()
    path, run = write_config(tmp_path, cfg)
    assert main(["fit", "--config", str(path)]) == 0
    last = run / "checkpoints" / "last.ckpt"
    good, history = last.read_bytes(), (run / "metrics.csv").read_text()
    capsys.readouterr()
    with file_size_limit(len(good) // 2):
        code = main(["fit", "--config", str(path), "--trainer.max_steps", "6", "--ckpt_path", str(last)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("diffmvae: error: cannot write ") and "last.ckpt" in err[0], err
    assert last.read_bytes() == good
    assert sorted(os.listdir(last.parent)) == ["last.ckpt"]
    assert not (run / "metrics.before_resume.csv").exists() and logged_steps((run / "metrics.csv").read_text()) >= logged_steps(history) == {0, 1, 2, 3}


def logged_steps(text):
    return {int(r["step"]) for r in csv.DictReader(io.StringIO(text)) if r.get("train/loss")}
