"""The main job's report: coherence and both Fréchet distances of its samples given m0 and of its unconditional samples
(under its latent score prior), beside the feed-forward MoPoE numbers the README records.

    python experiments/polydigits/quickstart_report.py [RUN] [--classifiers FILE]     (default runs/quickstart)

Reads RUN/given_m0/samples.npz and RUN/unconditional/samples.npz (written by `scripts/quickstart.sh`), judges them
as `experiments/polydigits/coherence.py` does (the digit classifiers of `diffmvae evaluate`: `scripts/quickstart.sh`
passes experiments/polydigits/judges.pt, the set that judged the recorded baseline, so both rows are read by the same
judges; without --classifiers, the set cached for the data, trained once when missing; Fréchet distances to all real test images in the classifier's feature space and, label-free, on 64
principal components of real training pixels), prints a table and the precision the run trained in (RUN/config.yaml)
and writes them to RUN/report.md and RUN/report.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from coherence import judge

from diffmvae.io import atomic_write, markdown_table

# The feed-forward MoPoE of experiments/polydigits/mopoe.yaml (2000 steps at batch 128), three seeds, all 360 test
# examples, as the README records them: mean over seeds (the spread is in the README).
BASELINE = {
    "given m0": {"model": "feed-forward MoPoE", "coherence": 0.859, "fd_mean": 103.3, "fd_pca_mean": 19.0},
    # unconditional: under its own latent score prior, fitted as the main job fits its (1000 steps), the same way sampled
    "unconditional": {"model": "feed-forward MoPoE, score prior", "coherence": 0.690, "fd_mean": 92.2, "fd_pca_mean": 6.9},
}
PARTS = {"given m0": "given_m0", "unconditional": "unconditional"}


def report(run: Path, classifiers: str | None = None) -> tuple[str, dict]:
    missing = [run / folder / "samples.npz" for folder in PARTS.values() if not (run / folder / "samples.npz").is_file()]
    if missing:
        raise SystemExit(f"quickstart_report: {missing[0]} does not exist; run `bash scripts/quickstart.sh {run}` first")
    judged = {part: judge(run / folder / "samples.npz", classifiers) for part, folder in PARTS.items()}
    rows = []
    for part, result in judged.items():
        base = BASELINE[part]
        rows.append([part, "this run", f"{result['coherence']:.3f}", f"{result['fd_mean']:.1f}", f"{result['fd_pca_mean']:.1f}"])
        rows.append([part, f"{base['model']} (recorded)", f"{base['coherence']:.3f}", f"{base['fd_mean']:.1f}", f"{base['fd_pca_mean']:.1f}"])
    table = markdown_table(["samples", "model", "coherence", "FD, classifier features", "FD, pixel PCA"], rows)
    precision = training_precision(run)
    if precision is not None:
        table += f"\nThis run trained in `{precision}` (its config.yaml's trainer.precision).\n"
        judged["training_precision"] = precision
    return table, judged


def training_precision(run: Path) -> str | None:
    """The precision the run trained in, from the config.yaml Lightning wrote in the run folder (None without one); a
    run fitted without ``--trainer.precision`` has ``null`` there, Lightning's default: ``32-true``."""
    config = run / "config.yaml"
    if not config.is_file():
        return None
    precision = ((yaml.safe_load(config.read_text()) or {}).get("trainer") or {}).get("precision")
    return "32-true" if precision is None else str(precision)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", nargs="?", default="runs/quickstart", help="the main job's run folder")
    p.add_argument("--classifiers", default=None, help="classifier file written by `diffmvae classifiers fit` (default: the cached set)")
    args = p.parse_args()
    run = Path(args.run)
    table, judged = report(run, args.classifiers)
    atomic_write(run / "report.md", lambda path: path.write_text(table))
    atomic_write(run / "report.json", lambda path: path.write_text(json.dumps(judged, indent=1) + "\n"))
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
