#!/usr/bin/env bash
# The main job: set up, train the feed-forward MoPoE on PolyDigits (M = 5), then generate m1..m4 from m0.
#   bash scripts/quickstart.sh [RUN_FOLDER]      (default runs/quickstart)
# Run again, it leaves a finished run as it is and says so; an interrupted one (Ctrl-C, SIGTERM) is resumed.
# QUICKSTART_FIT_ARGS adds fit arguments and QUICKSTART_SETUP=0 skips the set-up (the documentation's tests run
# the job at a tiny size that way).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/quickstart}
if [ -f "$RUN/given_m0/samples.npz" ]; then
  echo "$RUN already holds a finished quickstart (nothing was changed); train another with: bash scripts/quickstart.sh runs/quickstart2"
  exit 0
fi
[ "${QUICKSTART_SETUP:-1}" = 0 ] || bash scripts/setup.sh
. .venv/bin/activate
start=$(date +%s)
RESUME=()
[ -f "$RUN/checkpoints/last.ckpt" ] && RESUME=(--ckpt_path "$RUN/checkpoints/last.ckpt") && echo "resuming $RUN from its last checkpoint"
# shellcheck disable=SC2086  # QUICKSTART_FIT_ARGS is a list of words
diffmvae fit --config experiments/polydigits/quickstart.yaml --trainer.default_root_dir "$RUN" "${RESUME[@]}" ${QUICKSTART_FIT_ARGS:-}
diffmvae sample --ckpt "$RUN/checkpoints/last.ckpt" --given m0 --n 64 --out "$RUN/given_m0" --seed 0 --overwrite
echo "quickstart done in $(( $(date +%s) - start ))s: $RUN/ (checkpoints/last.ckpt, metrics.csv, samples/, given_m0/grid.png)"
