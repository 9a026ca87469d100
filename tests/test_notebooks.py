"""The latent-traversal notebooks (experiments/notebooks/) run from top to bottom with nbclient on a tiny trained run
(its checkpoint and score prior passed through DIFFMVAE_CKPT), so they cannot rot; their figures come out."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from diffmvae.commands.main import main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "experiments" / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def tiny_run_with_prior(trained, tmp_path_factory):
    import shutil

    _, ckpt = trained
    folder = tmp_path_factory.mktemp("notebook_run")
    copy = folder / "last.ckpt"
    shutil.copy(ckpt, copy)
    assert main(["prior", "fit", "--ckpt", str(copy), "--prior.channels", "[8,8]", "--prior.emb_dim", "8", "--prior.attention", "false",
                 "--prior.sample_steps", "3", "--fit.steps", "3", "--fit.batch_size", "8"]) == 0
    return copy


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"latent_traversals.ipynb", "conditional_and_prior_walks.ipynb"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_draws(path, tiny_run_with_prior, monkeypatch):
    monkeypatch.setenv("DIFFMVAE_CKPT", str(tiny_run_with_prior))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"{path.name} drew {len(images)} figures"
    text = "".join(o.get("text", "") for o in outputs)
    assert str(tiny_run_with_prior) in text and "score prior: yes" in text and "has no score prior" not in text  # the run it was given
    assert os.environ["DIFFMVAE_CKPT"] == str(tiny_run_with_prior)


def test_committed_notebooks_hold_real_figures():
    """The committed notebooks carry the outputs of the real PolyDigits run: every code cell ran, no error, figures."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in cells), f"{path.name} has cells that were not run"
        outputs = [o for c in cells for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], path.name
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2, path.name
        assert "runs/diffmvae_star" in "".join(o.get("text", "") for o in outputs), path.name
