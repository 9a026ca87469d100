#!/usr/bin/env bash
# Create .venv and install diffmvae with its dev extra (tests, docs, notebooks, loggers), or with --runtime the library
# alone (what the main job needs). torch is pinned by constraints.txt; a local
# CPU wheel in $TORCH_WHEEL_DIR (default /opt/wheels) is used when present, else torch==2.13.0 comes from the index.
# SETUP_INSTALLER=uv (default: uv where it can be installed, pip if it cannot or fails) or pip.
#   bash scripts/setup.sh [--runtime]
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") TARGET=".[dev]" ;;
  --runtime) TARGET="." ;;
  *) echo "scripts/setup.sh: unknown option ${1}; use no option (everything) or --runtime (the library alone)" >&2; exit 2 ;;
esac
INSTALLER=${SETUP_INSTALLER:-uv}
case "$INSTALLER" in
  uv|pip) ;;
  *) echo "scripts/setup.sh: SETUP_INSTALLER=${INSTALLER} is not an installer it knows; use uv (the default) or pip" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
WHEELS=${TORCH_WHEEL_DIR:-/opt/wheels}
FIND=()
[ -d "$WHEELS" ] && FIND=(--find-links "$WHEELS")
# uv installs the same packages as pip in about half the time (parallel downloads, unpacking and byte-compiling);
# where uv cannot be installed or fails (or SETUP_INSTALLER=pip), pip does it.
if [ "$INSTALLER" = uv ] && python -m pip install -q uv 2>/dev/null &&
  python -m uv pip install -q --compile-bytecode "${FIND[@]}" -c constraints.txt "torch==2.13.0" -e "$TARGET"; then
  :
else
  [ "$INSTALLER" = pip ] || echo "scripts/setup.sh: uv was not available or failed; installing with pip" >&2
  python -m pip install -q --upgrade pip
  python -m pip install -q "${FIND[@]}" -c constraints.txt "torch==2.13.0"
  python -m pip install -q "${FIND[@]}" -c constraints.txt -e "$TARGET"
fi
python - <<'PY'
import importlib.util, sys
if importlib.util.find_spec("torchvision") is not None:
    sys.exit("torchvision is installed in .venv; it breaks lightning/torchmetrics imports here: pip uninstall torchvision")
import torch, lightning
print(f"diffmvae environment ready: torch {torch.__version__}, lightning {lightning.__version__}")
PY
