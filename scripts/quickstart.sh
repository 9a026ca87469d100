#!/usr/bin/env bash
# The main job: set up, train Diff-MVAE* (diffusion decoders, trained jointly) on PolyDigits (M = 5), fit its latent
# score prior, generate m1..m4 given m0 and all five modalities unconditionally, and judge both beside the
# feed-forward MoPoE baseline the README records.
#   bash scripts/quickstart.sh [RUN_FOLDER]      (default runs/quickstart)
# Run again, it leaves a finished run as it is and says so; an interrupted one (Ctrl-C, SIGTERM) is resumed.
# QUICKSTART_SETUP=0 skips the set-up; QUICKSTART_PRECISION sets the training's precision (below); QUICKSTART_FIT_ARGS,
# QUICKSTART_PRIOR_ARGS, QUICKSTART_SAMPLE_ARGS and QUICKSTART_REPORT_ARGS add arguments to each step (the
# documentation's tests run the job at a tiny size that way).
# shellcheck disable=SC2086  # the QUICKSTART_*_ARGS are lists of words
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/quickstart}
if [ -f "$RUN/report.md" ]; then
  echo "$RUN already holds a finished quickstart (nothing was changed); train another with: bash scripts/quickstart.sh runs/quickstart2"
  exit 0
fi
[ "${QUICKSTART_SETUP:-1}" = 0 ] || bash scripts/setup.sh --runtime
. .venv/bin/activate
start=$(date +%s)
# bfloat16 autocast where the CPU has bfloat16 instructions (the step 0.81 times the float32 one on 2 cores, the same
# coherence within the spread of seeds); float32 on other CPUs, where bfloat16 is emulated and slow, and on a GPU.
# The run's config.yaml and report.md record which. QUICKSTART_PRECISION=32-true (or bf16-mixed) chooses.
BF16_CPU="import torch; print('bf16-mixed' if not torch.cuda.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else '32-true')"
PRECISION=${QUICKSTART_PRECISION:-$(python -c "$BF16_CPU" 2>/dev/null || echo 32-true)}
CKPT="$RUN/checkpoints/last.ckpt"
if [ ! -f "$RUN/checkpoints/last.prior.ckpt" ]; then
  RESUME=()
  [ -f "$CKPT" ] && RESUME=(--ckpt_path "$CKPT") && echo "resuming $RUN from its last checkpoint"
  echo "training in $PRECISION"
  diffmvae fit --config experiments/polydigits/quickstart.yaml --trainer.default_root_dir "$RUN" --trainer.precision "$PRECISION" "${RESUME[@]}" ${QUICKSTART_FIT_ARGS:-}
  echo "trained in $(( $(date +%s) - start ))s; fitting the latent score prior"
  diffmvae prior fit --ckpt "$CKPT" --config experiments/polydigits/prior.yaml --fit.steps 1000 --fit.thread_split 2 ${QUICKSTART_PRIOR_ARGS:-}
fi
diffmvae sample --ckpt "$CKPT" --given m0 --n 360 --out "$RUN/given_m0" --seed 0 --thread_split 2 --overwrite ${QUICKSTART_SAMPLE_ARGS:-}
diffmvae sample --ckpt "$CKPT" --given none --n 360 --out "$RUN/unconditional" --seed 0 --thread_split 2 --overwrite ${QUICKSTART_SAMPLE_ARGS:-}
python experiments/polydigits/quickstart_report.py "$RUN" --classifiers experiments/polydigits/judges.pt ${QUICKSTART_REPORT_ARGS:-}
echo "guided samples (opt-in, not exact samples of p(x|z)): diffmvae sample --ckpt $CKPT --given m0 --n 360 --out $RUN/guided_m0 --guidance 2"
echo "quickstart done in $(( $(date +%s) - start ))s: $RUN/ (checkpoints/last.ckpt, last.prior.ckpt, given_m0/grid.png, unconditional/grid.png, report.md)"
