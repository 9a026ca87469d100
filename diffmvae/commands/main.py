"""The ``diffmvae`` command: ``fit`` / ``validate`` / ``test`` through LightningCLI, ``sample`` for generation.

User errors (bad paths, config keys or values, modality names) end with one ``diffmvae: error: ...`` line and
exit status 2; set ``DIFFMVAE_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from diffmvae.commands.classifiers import _classifiers
from diffmvae.commands.evaluate import _evaluate
from diffmvae.commands.export import _export
from diffmvae.commands.fit import _lightning
from diffmvae.commands.pipeline import _pipeline
from diffmvae.commands.prior import _prior
from diffmvae.commands.sample import _sample
from diffmvae.commands.unite import unite_command
from diffmvae.io import DiffMVAEError, one_line
from diffmvae.store.build import configure_parsing

log = logging.getLogger("diffmvae")

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    configure_parsing()

    commands = {
        "sample": _sample, "prior": _prior, "evaluate": _evaluate, "classifiers": _classifiers, "export": _export, "unite": unite_command,
        "pipeline": _pipeline,
        **{c: _lightning for c in LIGHTNING_SUBCOMMANDS},
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: diffmvae {{{','.join(commands)}}} ...  (diffmvae COMMAND --help for its options)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return commands[argv[0]](argv if argv[0] in LIGHTNING_SUBCOMMANDS else argv[1:])
    except (DiffMVAEError, ValueError, KeyError, OSError) as e:
        if os.environ.get("DIFFMVAE_DEBUG"):
            raise
        # An OSError the library did not name (a full disk or a read-only folder met inside Lightning or a logger).
        message = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else one_line(e)
        print(f"diffmvae: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
