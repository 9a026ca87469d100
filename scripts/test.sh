#!/usr/bin/env bash
# The test command: every test, slow ones included, in the .venv made by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
