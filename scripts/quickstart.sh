#!/usr/bin/env bash
# The main job: set up, train the feed-forward MoPoE on PolyDigits (M = 5), then generate m1..m4 from m0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
start=$(date +%s)
diffmvae fit --config experiments/polydigits/quickstart.yaml
diffmvae sample --ckpt runs/quickstart/checkpoints/last.ckpt --given m0 --n 64 --out runs/quickstart/given_m0 --seed 0
echo "quickstart done in $(( $(date +%s) - start ))s: runs/quickstart/ (checkpoints/last.ckpt, metrics.csv, samples/, given_m0/grid.png)"
