"""Run a pipeline's stages, each one ``diffmvae`` command in a subprocess; finished stages are skipped."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from diffmvae.io import DiffMVAEError, atomic_write
from diffmvae.pipeline.report import write_pipeline_report
from diffmvae.pipeline.spec import PipelineSpec, Run, derived_config, last_ckpt, stage_marker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    run: str
    name: str
    argv: tuple[str, ...]
    prepare: Callable[[], None] | None = None


def stages(spec: PipelineSpec) -> list[Stage]:
    """Every stage in order: per run ``fit``, ``prior`` (when the model names a prior config), then ``evaluate``
    (conditional and unconditional metrics with the first available prior) and ``unconditional_<prior>`` for the other
    priors; the report comes after them all (:func:`run_pipeline`)."""
    out: list[Stage] = []
    for run in spec.runs():
        folder, ckpt = spec.out / run.name, last_ckpt(spec, run)
        config_path = spec.out / "configs" / f"{run.name}.yaml"

        def write_config(run: Run = run, config_path: Path = config_path) -> None:
            text = yaml.safe_dump(derived_config(spec, run), sort_keys=False)
            atomic_write(config_path, lambda tmp: tmp.write_text(text))

        fit = ["fit", "--config", str(config_path), *spec.fit_args, *run.model.args]
        out.append(Stage(run.name, "fit", tuple(fit), write_config))
        priors = [p for p in spec.priors if p == "gaussian" or run.model.prior is not None]
        if run.model.prior is not None:
            argv = ["prior", "fit", "--ckpt", str(ckpt), "--config", str(run.model.prior), "--overwrite", *run.model.prior_args, *spec.prior_args]
            out.append(Stage(run.name, "prior", tuple(argv)))
        ev = spec.evaluate
        common = ["--ckpt", str(ckpt), "--names", run.name, "--seed", str(ev.get("seed", 0)), *ev["args"]]
        for key in ("n_samples", "max_subsets"):
            if ev.get(key) is not None:
                common += [f"--{key}", str(ev[key])]
        if spec.classifiers:
            common += ["--classifiers", str(spec.classifiers)]
        for i, prior in enumerate(priors):
            parts = [] if i == 0 else ["--parts", "unconditional"]
            name = "evaluate" if i == 0 else f"unconditional_{prior}"
            out.append(Stage(run.name, name, ("evaluate", *common, "--prior", prior, "--out", str(folder / name), "--overwrite", *parts)))
    return out


def diffmvae_command(argv: Sequence[str]) -> list[str]:
    """The subprocess that runs ``diffmvae ARGV`` with this interpreter."""
    return [sys.executable, "-m", "diffmvae", *argv]


Launcher = Callable[[Sequence[str]], int]


def subprocess_launcher(env: Mapping[str, str] | None = None) -> Launcher:
    """Run ``diffmvae ARGV`` in a fresh interpreter (the default: each stage starts clean, as from a shell)."""
    def launch(argv: Sequence[str]) -> int:
        return subprocess.run(diffmvae_command(argv), env={**os.environ, **(env or {})}, check=False).returncode

    return launch


def run_stage(spec: PipelineSpec, stage: Stage, launcher: Launcher | None = None) -> float:
    """Run one stage (by default its command in a subprocess) and write its marker; returns the seconds it took. A fit
    that left a ``last.ckpt`` behind resumes from it."""
    if stage.prepare is not None:
        stage.prepare()
    argv = list(stage.argv)
    if stage.name == "fit":
        ckpt = spec.out / stage.run / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            log.info("%s: resuming the interrupted fit from %s", stage.run, ckpt)
            argv += ["--ckpt_path", str(ckpt)]
    log.info("[%s] diffmvae %s", stage.run, " ".join(shlex.quote(a) for a in argv))
    start = time.perf_counter()
    code = (launcher or subprocess_launcher())(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise DiffMVAEError(f"pipeline stage {stage.run}/{stage.name} failed (exit {code}); its output is above; "
                            f"run the pipeline again to resume from this stage")
    record = {"run": stage.run, "stage": stage.name, "argv": argv, "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(stage_marker(spec, stage.run, stage.name), lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return seconds


def run_pipeline(spec: PipelineSpec, *, only: Sequence[str] = (), dry_run: bool = False, launcher: Launcher | None = None) -> list[Path]:
    """Run every stage not yet done (or only the runs named in ``only``), then write the report
    (:func:`write_pipeline_report`); returns the report's files (none on a dry run). ``launcher`` runs one
    ``diffmvae`` command line and returns its exit status (default: :func:`subprocess_launcher`)."""
    todo = stages(spec)
    names = {r.name for r in spec.runs()}
    unknown = [o for o in only if o not in names]
    if unknown:
        raise DiffMVAEError(f"--only names {unknown[0]!r}, which is not a run of this pipeline ({', '.join(sorted(names))})")
    for stage in todo:
        if only and stage.run not in only:
            continue
        if stage_marker(spec, stage.run, stage.name).is_file():
            log.info("[%s] %s: done before, skipped", stage.run, stage.name)
            continue
        if dry_run:
            log.info("[%s] %s: diffmvae %s", stage.run, stage.name, " ".join(shlex.quote(a) for a in stage.argv))
            continue
        seconds = run_stage(spec, stage, launcher)
        log.info("[%s] %s done in %.0fs", stage.run, stage.name, seconds)
    if dry_run:
        return []

    return write_pipeline_report(spec)
