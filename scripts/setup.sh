#!/usr/bin/env bash
# Create .venv and install diffmvae with its dev extra. torch is pinned by constraints.txt; a local CPU wheel
# in $TORCH_WHEEL_DIR (default /opt/wheels) is used when present, else pip takes torch==2.13.0 from the index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
WHEELS=${TORCH_WHEEL_DIR:-/opt/wheels}
FIND=()
[ -d "$WHEELS" ] && FIND=(--find-links "$WHEELS")
python -m pip install -q "${FIND[@]}" -c constraints.txt "torch==2.13.0"
python -m pip install -q "${FIND[@]}" -c constraints.txt -e ".[dev]"
python - <<'PY'
import importlib.util, sys
if importlib.util.find_spec("torchvision") is not None:
    sys.exit("torchvision is installed in .venv; it breaks lightning/torchmetrics imports here: pip uninstall torchvision")
import torch, lightning
print(f"diffmvae environment ready: torch {torch.__version__}, lightning {lightning.__version__}")
PY
