"""The ``diffmvae`` command: ``fit`` / ``validate`` through LightningCLI, and the library's own commands.

User errors (bad paths, config keys or values, modality names) end with one ``diffmvae: error: ...`` line and
exit status 2; set ``DIFFMVAE_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence

from diffmvae.commands.classifiers import _classifiers
from diffmvae.commands.common import dash_hint, short
from diffmvae.commands.evaluate import _evaluate
from diffmvae.commands.export import _export
from diffmvae.commands.fit import _lightning
from diffmvae.commands.pipeline import _pipeline
from diffmvae.commands.prior import _prior
from diffmvae.commands.sample import _sample
from diffmvae.commands.unite import unite_command
from diffmvae.io import DiffMVAEError, one_line
from diffmvae.store.build import configure_parsing, parser_error

log = logging.getLogger("diffmvae")

LIGHTNING_SUBCOMMANDS = ("fit", "validate")
SUMMARIES = {
    "fit": "train a model from a config (LightningCLI; --config YAML, --trainer.* / --model.* / --data.* overrides)",
    "validate": "the validation loss of a config's model (LightningCLI)",
    "sample": "generate missing modalities from any subset of observed ones (or from the prior)",
    "evaluate": "coherence, both Fréchet distances, latent probes and ELBO of trained runs",
    "prior": "prior fit: fit the latent score prior of a trained run",
    "classifiers": "classifiers fit: train the judges of evaluate on real data",
    "export": "write a trained run as a model folder (safetensors, config, model card)",
    "unite": "Unite-and-Conquer across separately trained models",
    "pipeline": "a data set's experiment pipeline: fit, prior, evaluate, table and plots (resumable)",
}

COMMANDS = {
    **{c: _lightning for c in LIGHTNING_SUBCOMMANDS},
    "sample": _sample, "evaluate": _evaluate, "prior": _prior, "classifiers": _classifiers, "export": _export, "unite": unite_command,
    "pipeline": _pipeline,
}


def usage() -> str:
    """``diffmvae --help``: the commands, a line each."""
    width = max(map(len, SUMMARIES))
    lines = ["usage: diffmvae COMMAND [options] [--verbose]   (diffmvae COMMAND --help for a command's options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in SUMMARIES.items()]
    lines += ["", "Flags are written with underscores (--n_samples, --trainer.max_steps); switches take no value (--overwrite).",
              "--verbose keeps Lightning's start-up lines and library warnings in the output."]
    return "\n".join(lines)


def quiet_libraries() -> None:
    """Keep Lightning's start-up chatter (accelerator lines, tips, seed lines), transformers' weight-loading bars
    and advisories, and the deprecation notices of the packages underneath out of a command's output; ``--verbose``
    keeps them. Settings the user made in the environment win."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules:  # imported already (by the caller of main): the variables above are read at import
        from transformers.utils import logging as transformers_logging  # heavy: only when transformers is imported already

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|num_workers|LitLogger|litmodels).*")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if "--verbose" in argv:
        argv.remove("--verbose")
    else:
        quiet_libraries()

    configure_parsing()
    commands = COMMANDS
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv or argv[0] not in commands:
        what = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"diffmvae: error: {what}; one of {', '.join(commands)} (diffmvae --help lists them)", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv if argv[0] in LIGHTNING_SUBCOMMANDS else argv[1:])
    except (DiffMVAEError, ValueError, KeyError, OSError) as e:
        if os.environ.get("DIFFMVAE_DEBUG"):
            raise
        # An OSError the library did not name (a full disk or a read-only folder met inside Lightning or a logger).
        message = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else one_line(e)
        print(f"diffmvae: error: {short(dash_hint(parser_error(message)))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
