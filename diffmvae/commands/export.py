"""``diffmvae export``: write a trained run as a model folder."""

from __future__ import annotations

import logging

from diffmvae.commands.common import CommandParser
from diffmvae.store.folder import export_model

log = logging.getLogger("diffmvae")


def _export(argv: list[str]) -> int:
    p = CommandParser(prog="diffmvae export", description="Write a trained run as a model folder: model.safetensors (EMA "
                                "weights), config.yaml, README.md (model card), prior.safetensors when a score prior exists.")
    p.add_argument("--ckpt", required=True, help="checkpoint written by `diffmvae fit`")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--prior_ckpt", default=None, help="score prior to include (default: the one beside CKPT, if any)")
    p.add_argument("--evaluation", default=None, help="a `diffmvae evaluate` output folder whose table goes into the model card")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = p.parse_args(argv)
    out = export_model(args.ckpt, args.out, prior_ckpt=args.prior_ckpt, evaluation=args.evaluation, overwrite=args.overwrite)
    log.info("wrote %s (%s)", out, ", ".join(sorted(f.name for f in out.iterdir())))
    return 0
