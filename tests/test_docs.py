"""The documentation cannot rot: `mkdocs build --strict` passes (a broken link or a missing API object fails), the
README stays short and cites papers rather than this repository's process, and every command in the README and the
command-line page runs, at a tiny size, through the `diffmvae` entry point, as written, in a fresh working directory that
holds a finished main job. The main job itself runs twice: the second time it leaves the run alone and says so."""

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from diffmvae.commands.main import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "cli.md"]
FORBIDDEN = re.compile(r"[Ss]eed 00[0-9]|[Ii]ssue #?[0-9]|DESIGN(\.md| §)")
PRIOR = ["--prior.channels", "[8,8]", "--prior.emb_dim", "8", "--fit.steps", "3", "--fit.batch_size", "8",
         "--fit.statistics_samples", "32", "--fit.warmup_steps", "1", "--prior.sample_steps", "3"]
# What each command gains to run at a tiny size (later flags win, so these override the documented values).
TINY = {
    "fit": ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.check_val_every_n_epoch", "1",
            "--data.init_args.train_length", "32", "--data.init_args.batch_size", "16"],
    "validate": ["--trainer.limit_val_batches", "1"],
    "sample": ["--n", "4"],
    "prior": PRIOR,
    "classifiers": ["--epochs", "1", "--data.init_args.train_length", "64"],
    "evaluate": ["--n_samples", "8", "--max_subsets", "1", "--probe_train", "16", "--pca_train", "16", "--pca_components", "2"],
    "unite": ["--n", "8"],
    "export": [],
    "pipeline": ["--dry_run"],
}
SKIPPED = ("bash scripts/", "pip install ")  # the two commands themselves (run by CI and the fresh-clone check) and installs


def env() -> dict[str, str]:
    return {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def commands(page: Path) -> list[list[str]]:
    """The shell commands of a page's ``bash`` blocks, continuation lines joined and comments dropped."""
    out = []
    for block in blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(words)
    return out


def tiny(words: list[str]) -> list[str] | None:
    """The command at a tiny size (None: not one to run here); a command of a kind this test does not know fails."""
    line = " ".join(words)
    if line.startswith(SKIPPED):
        return None
    assert words[0] == "diffmvae", f"the docs test cannot run {line!r}: teach it how, or leave it out of the page"
    if len(words) == 1 or words[1].startswith("-"):
        return words
    extra = list(TINY[words[1]])
    if words[1] == "fit" and "--ckpt_path" in words:
        extra[1] = "4"  # a resumed run goes two steps further
    if words[1] == "sample" and "--inputs" in words:
        extra = []
    if words[1] == "pipeline" and "--dry_run" in words:
        extra = []
    return words + extra


def run(words: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffmvae", *words[1:]], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=600)


def run_here(words: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The command through ``diffmvae.commands.main.main`` in this process (what the ``diffmvae`` script calls), in
    ``cwd`` and the environment of :func:`env`, both restored after it with the random state: the same code path
    without paying the imports for every command. A multi-process command runs as a subprocess: Lightning's launcher
    re-runs ``sys.argv``, which here is pytest's."""
    if "--trainer.strategy" in words:
        return run(words, cwd)
    saved_env, saved_cwd, saved_rng = dict(os.environ), Path.cwd(), torch.get_rng_state()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env())  # the environment the subprocess path gives a command
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(words[1:])
            except SystemExit as stop:  # --help and parser errors exit
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_rng_state(saved_rng)
    return subprocess.CompletedProcess(words, code, out.getvalue(), err.getvalue())


def test_mkdocs_build_is_strict_and_clean(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "diffmvae" / "index.html").read_text()
    assert "MultimodalVAE" in api and "load_run" in api  # the API reference is rendered from the docstrings


def test_readme_is_short_and_every_text_cites_papers():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    hits = []
    for top in ("README.md", "docs", "diffmvae", "encoders", "decoders", "priors", "experiments"):
        paths = [ROOT / top] if (ROOT / top).is_file() else [p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in
                                                            (".md", ".py", ".yaml", ".ipynb", ".txt")]
        hits += [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in paths for m in FORBIDDEN.finditer(p.read_text(errors="ignore"))]
    assert not hits, hits[:10]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """The main job at a tiny size, run twice through scripts/quickstart.sh."""
    run_dir = tmp_path_factory.mktemp("main") / "quickstart"
    judges = run_dir.parent / "judges.pt"
    fitted = run(["diffmvae", "classifiers", "fit", "--config", str(ROOT / "experiments/polydigits/classifiers.yaml"), *TINY["classifiers"],
                  "--out", str(judges)], run_dir.parent)
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    job = {**env(), "QUICKSTART_SETUP": "0", "QUICKSTART_FIT_ARGS": " ".join(TINY["fit"]), "QUICKSTART_PRIOR_ARGS": " ".join(PRIOR),
           "QUICKSTART_SAMPLE_ARGS": "--n 24", "QUICKSTART_REPORT_ARGS": f"--classifiers {judges}"}
    first = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh"), str(run_dir)], env=job, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert (run_dir / "given_m0" / "grid.png").is_file() and (run_dir / "unconditional" / "grid.png").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "last.prior.ckpt").is_file()
    report = (run_dir / "report.md").read_text()  # this run's numbers beside the recorded feed-forward baseline's
    assert report in first.stdout and report.count("| this run |") == 2 and "feed-forward MoPoE, score prior (recorded) | 0.690" in report
    # bfloat16 where the CPU has bfloat16 instructions, float32 elsewhere; the fit ran in it and the report says so
    bf16_cpu = not torch.cuda.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    expected = "bf16-mixed" if bf16_cpu else "32-true"
    assert f"training in {expected}" in first.stdout and f"This run trained in `{expected}`" in report
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["precision"] == expected
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    second = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh"), str(run_dir)], env=job, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "already holds a finished quickstart" in second.stdout, second.stdout + second.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_documented_command_runs(page, main_job, tmp_path):
    """Each page's commands, in order, in a working directory of their own holding the main job's run."""
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    shutil.copytree(main_job, tmp_path / "runs" / "quickstart")
    ran = 0
    for words in commands(page):
        argv = tiny(words)
        if argv is None:
            continue
        done = run_here(argv, tmp_path)
        assert done.returncode == 0, f"{' '.join(words)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        ran += 1
    for code in blocks(page, "python"):
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{code}\n{done.stderr[-2000:]}"
        ran += 1
    assert ran >= 8
