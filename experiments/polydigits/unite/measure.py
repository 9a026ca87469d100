"""Unite-and-Conquer within one model on PolyDigits: conditional coherence and Fréchet distance for k = 1..4
observed modalities, decoding one PoE latent against composing one source per observed modality (``each``) against
both (``each+poe``), with exact samples (start 1); and the guidance sweep on one observed modality (``poe`` with
weight w), the curve of coherence against FD.

    python experiments/polydigits/unite/measure.py --ckpt runs/unite/star_dropout/checkpoints/last.ckpt \
        --classifiers runs/classifiers/<judge>.pt --out runs/unite/one_model

Writes ``rows.json`` (every row, appended as variants finish, so a stopped run resumes where it was), ``table.md``
and ``coherence_fd.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from diffmvae.data.batches import collate_split
from diffmvae.evaluation.frechet import FeatureExtractor
from diffmvae.evaluation.runs import classifiers_for_run
from diffmvae.evaluation.suite import conditional_metrics, subsets_by_size
from diffmvae.io import atomic_write
from diffmvae.model.composition import Composition
from diffmvae.store.load import load_run

log = logging.getLogger("unite.measure")


def variants(guidance: list[float]) -> list[tuple[str, Composition | None, list[int]]]:
    """``(name, composition, ks)``: PoE, each, each+poe at every k (each = PoE at k = 1), the guidance sweep and
    several posterior draws at k = 1."""
    out: list[tuple[str, Composition | None, list[int]]] = [
        ("poe", None, [1, 2, 3, 4]),
        ("each", Composition("each", (1.0,)), [2, 3, 4]),
        ("each+poe", Composition("each+poe", (1.0,)), [2, 3, 4]),
    ]
    out += [(f"poe w={w:g}", Composition("poe", (w,)), [1, 2, 3, 4] if w == 1.5 else [1]) for w in guidance]
    # Several posterior draws of the one observed modality: averaged (weights 1/n, no null) or multiplied (weights 1).
    out += [("poe 4 draws w=0.25", Composition("poe", (0.25,), draws=4), [1]), ("poe 2 draws w=1", Composition("poe", (1.0,), draws=2), [1]),
            ("poe 4 draws w=1", Composition("poe", (1.0,), draws=4), [1])]
    # The total weight split over the k sources (sum 1.5, the best single-source guidance), one variant per k.
    out += [("each sum=1.5", {k: Composition("each", (1.5 / k,)) for k in (2, 3, 4)}, [2, 3, 4]),
            ("each+poe sum=1.5", {k: Composition("each+poe", (0.75 / k,), poe_weight=0.75) for k in (2, 3, 4)}, [2, 3, 4])]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--classifiers", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max_subsets", type=int, default=2, help="subsets per k (seeded sample, the same for every variant)")
    p.add_argument("--n_samples", type=int, default=None, help="test examples (default: all)")
    p.add_argument("--guidance", default="1.5,2,3", help="weights w of the guidance sweep on the PoE source")
    p.add_argument("--only", default=None, help="comma-separated variant names to run, in that order")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = load_run(args.ckpt)
    model = run.module.model
    sampling = run.module.sampling
    if not sampling.exact:
        raise SystemExit(f"the run samples from start {sampling.start}; this study is about exact samples (start 1)")
    clfs, _, _ = classifiers_for_run(run, args.classifiers, progress=False)
    extractors = {m: FeatureExtractor(c) for m, c in clfs.items() if hasattr(c, "features")}
    test = collate_split(run.datamodule.dataset("test"), args.n_samples)
    labels = test["label"]
    subsets = subsets_by_size(model.modalities, args.max_subsets, args.seed)
    rows_path = out / "rows.json"
    rows = json.loads(rows_path.read_text()) if rows_path.is_file() else []
    done = {(r["variant"], r["k"]) for r in rows}
    todo = variants([float(w) for w in args.guidance.split(",")])
    if args.only:  # these variants, in this order
        by_name = {v[0]: v for v in todo}
        unknown = [n for n in args.only.split(",") if n not in by_name]
        if unknown:
            raise SystemExit(f"unknown variant {unknown[0]!r}; choose from {', '.join(by_name)}")
        todo = [by_name[n] for n in args.only.split(",")]
    for name, variant, ks in todo:
        for k in ks:
            if (name, k) in done:
                continue
            start = time.perf_counter()
            composition = variant[k] if isinstance(variant, dict) else variant
            if composition is not None:
                model.check_composition(composition, subsets[k][0], sampling)
            new = conditional_metrics(model, test, labels, {k: subsets[k]}, clfs, extractors, seed=args.seed, sampling=sampling,
                                      progress=False, composition=composition)
            new = [{**r, "variant": name, "seconds": time.perf_counter() - start} for r in new if r["target"] == "mean"]
            rows += new
            atomic_write(rows_path, lambda f: f.write_text(json.dumps(rows, indent=1)))
            log.info("%-12s k=%d  %s  (%.0fs)", name, k, {r["metric"]: round(r["value"], 3) for r in new}, time.perf_counter() - start)
    write_table(rows, out, subsets)


def write_table(rows: list[dict], out: Path, subsets: dict) -> None:
    from matplotlib.figure import Figure

    value = {(r["variant"], r["k"], r["metric"]): r["value"] for r in rows}
    names = list(dict.fromkeys(r["variant"] for r in rows))
    ks = sorted({r["k"] for r in rows})
    lines = ["| k | given | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for k in ks:
        cells = []
        for n in names:
            c, f = value.get((n, k, "coherence")), value.get((n, k, "fd"))
            cells.append("" if c is None else f"{c:.3f} / {f:.1f}")
        lines.append(f"| {k} | {', '.join('+'.join(s) for s in subsets[k])} | " + " | ".join(cells) + " |")
    atomic_write(out / "table.md", lambda f: f.write_text("coherence / FD (mean over targets and subsets)\n\n" + "\n".join(lines) + "\n"))
    fig = Figure(figsize=(5, 4), dpi=110)
    ax = fig.subplots()
    sweep = [(n, value[(n, 1, "fd")], value[(n, 1, "coherence")]) for n in names if n.startswith("poe") and (n, 1, "fd") in value]
    ax.plot([s[1] for s in sweep], [s[2] for s in sweep], "o-", label="given one modality: PoE latent, guidance w")
    for n, f, c in sweep:
        ax.annotate(n.replace("poe ", "") if n != "poe" else "w=1", (f, c), fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("Fréchet distance (judge features)")
    ax.set_ylabel("conditional coherence")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out / "coherence_fd.png", lambda f: fig.savefig(f, format="png"))


if __name__ == "__main__":
    main()
