"""``python -m diffmvae``: the same as the ``diffmvae`` command."""

import sys

from diffmvae.commands.main import main

sys.exit(main())
