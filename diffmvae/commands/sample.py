"""``diffmvae sample``: generate missing modalities from any subset."""

from __future__ import annotations

import logging
import time

import torch

from decoders.threads import parts_on
from diffmvae.commands.common import CommandParser, add_sampling_arguments, sampling_settings
from diffmvae.commands.unite import add_composition_arguments, composition_from
from diffmvae.devices import add_device_arguments, pick_device, precision
from diffmvae.generation.inputs import read_inputs
from diffmvae.generation.sampling import (
    choose_prior,
    generate_from_subset,
    parse_given,
    sampling_record,
    select_examples,
    write_samples,
)
from diffmvae.io import DiffMVAEError, check_out_dir
from diffmvae.store.load import load_run

log = logging.getLogger("diffmvae")


def _sample(argv: list[str]) -> int:
    p = CommandParser(prog="diffmvae sample", description="Generate missing modalities from any subset.")
    p.add_argument("--ckpt", required=True, help="checkpoint written by `diffmvae fit`, or a model folder (`diffmvae export`)")
    p.add_argument("--given", default="none", help="observed modalities, comma separated, or 'none' (prior)")
    p.add_argument("--n", type=int, default=64, help="number of examples (with --inputs: as many as the inputs hold)")
    p.add_argument("--inputs", action="append", default=[], metavar="FILE.npz|MODALITY=IMAGE[,IMAGE...]",
                   help="read the --given modalities from your own files instead of the data set (repeatable): an .npz with "
                        "one array per modality, or image files per modality")
    p.add_argument("--out", required=True, help="output directory (grid.png, samples.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="where observed examples come from")
    p.add_argument("--no_ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--prior", default="auto", choices=("auto", "score", "gaussian"),
                   help="prior for --given none: the score prior (default when the model has one) or N(0, I)")
    p.add_argument("--prior_ckpt", default=None, help="score prior checkpoint (default: CKPT's name with .prior.ckpt)")
    p.add_argument("--prior_steps", type=int, default=None, help="DDIM steps of the score prior (default: its own, 50)")
    p.add_argument("--thread_split", type=int, default=1,
                   help="on a CPU: each batch cut into this many parts, each sampled on its own thread (faster on few cores; "
                        "the same distribution, other draws than unsplit; recorded)")
    add_sampling_arguments(p)
    add_composition_arguments(p)
    add_device_arguments(p)
    args = p.parse_args(argv)
    device = pick_device(args.accelerator, args.devices)
    composition = composition_from(args)
    if args.n < 1:
        raise DiffMVAEError(f"--n must be >= 1, got {args.n}")
    if args.thread_split < 1:
        raise DiffMVAEError(f"--thread_split must be >= 1, got {args.thread_split}")
    check_out_dir(args.out, overwrite=args.overwrite)
    start = time.perf_counter()
    run = load_run(args.ckpt, use_ema=not args.no_ema, device=device)
    model = run.module.model
    given = parse_given(args.given, model.modalities)
    sampling = sampling_settings(args, run.module)
    if composition is not None:
        if not given:
            raise DiffMVAEError("--compose needs observed modalities (--given)")
        model.check_composition(composition, given, sampling)
    prior, prior_name = choose_prior(args.prior, args.prior_ckpt, args.ckpt, model, steps=args.prior_steps) if not given else (None, None)
    generator = torch.Generator().manual_seed(args.seed)
    if args.inputs:
        if not given:
            raise DiffMVAEError("--inputs needs --given (the modalities they hold)")
        batch, args.n = read_inputs(args.inputs, given, run.datamodule.specs, run.datamodule.encode_text)
    else:
        batch = select_examples(run.datamodule.dataset(args.split), args.n, generator)
    with precision(args.precision, device):
        samples = generate_from_subset(model, batch, given, args.n, generator=generator, sampling=sampling, prior=prior,
                                       composition=composition, thread_split=args.thread_split)
    labels = batch.get("label") if given else None  # unconditional samples have no true label
    texts = {m: run.datamodule.decode_text(m, samples[m]["input_ids"]) for m, spec in run.datamodule.specs.items()
             if spec.is_text and m in samples}
    record = {**sampling_record(model, sampling, composition), "thread_split": parts_on(device, args.thread_split)}
    paths = write_samples(args.out, samples, run.datamodule.specs, given, labels if isinstance(labels, torch.Tensor) else None,
                          prior=prior_name, sampling=record, texts=texts)
    log.info("wrote %s in %.1fs", ", ".join(map(str, paths)), time.perf_counter() - start)
    return 0
