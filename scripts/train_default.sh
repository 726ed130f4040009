#!/usr/bin/env bash
# Train the shipped models on CPU (what made fastblt/assets/, see the README's "Shipped models"):
#   VARIANT=blt  (plain BLT, the paper's recipe, from scratch):
#     1. entropy model (small preset's causal byte LM)        → runs/entropy
#     2. threshold calibration: mean patch 4 bytes, max 8     → runs/entropy/calibration.json
#     3. BLT small, next-byte CE                              → runs/blt  → fastblt/assets/blt_model
#   VARIANT=bltd (the default model, BLT-D B = 8):
#     warm start from the plain BLT (INIT_FROM), aligned blocks (1 per 16 bytes, provisional or fused
#     latent), the paper's literal L_clean + L_mask, self-distillation λ = 0.5
#                                                             → runs/bltd → fastblt/assets/default_model
#   then export bf16 (≤ 25 MB) with held-out figures and slot accuracies.
#
# Environment (defaults in brackets):
#   BUDGET_MIN [118]         wall-clock guard for the BLT/BLT-D run (stops cleanly, checkpoint kept)
#   STEPS [2600 bltd, 3000 blt]  steps the cosine schedule is defined on
#   LR [5e-4 bltd, 1e-3 blt] peak learning rate
#   INIT_FROM [fastblt/assets/blt_model]  bltd: the trained plain BLT to start from
#   ENTROPY_BUDGET_MIN [8]   blt: wall-clock minutes for the entropy model
#   THREADS [1]              torch CPU threads (2 is faster on an idle machine; 2 threads next to other jobs is ~10x slower)
#   DATA [data_cache/corpus] corpus folder (built here if missing)
#   SKIP_ENTROPY [0]         blt: 1 reuses an existing calibrated runs/entropy
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${VARIANT:-bltd}
BUDGET_MIN=${BUDGET_MIN:-118}
THREADS=${THREADS:-1}
DATA=${DATA:-data_cache/corpus}

if [ ! -f "$DATA/train.bin" ]; then
  python -m fastblt.cli data build
fi

COMMON=(--preset small --data "$DATA" --batch-size 8 --seq-len 512 --eval-every 100 --save-every 50
        --time-budget-min "$BUDGET_MIN" --threads "$THREADS")
case "$VARIANT" in
  bltd)
    RUN=runs/bltd; EXPORT=fastblt/assets/default_model
    python -m fastblt.cli train --objective bltd --block-size 8 --blocks aligned --block-stride 16 \
      --fused-frac 0.5 --mask-norm sum --distill 0.5 --init-from "${INIT_FROM:-fastblt/assets/blt_model}" \
      --steps "${STEPS:-2600}" --lr "${LR:-5e-4}" --out "$RUN" "${COMMON[@]}"
    ;;
  blt)
    RUN=runs/blt; EXPORT=fastblt/assets/blt_model
    if [ "${SKIP_ENTROPY:-0}" != 1 ]; then
      python -m fastblt.cli train --objective entropy --preset small --data "$DATA" --out runs/entropy \
        --steps 1200 --batch-size 16 --seq-len 512 --lr 1.5e-3 --eval-every 100 --save-every 100 \
        --time-budget-min "${ENTROPY_BUDGET_MIN:-8}" --threads "$THREADS"
      python -m fastblt.training.calibrate --entropy-model runs/entropy --data "$DATA" --rows 64 --seq-len 1024
    fi
    python -m fastblt.cli train --objective blt --entropy-model runs/entropy \
      --steps "${STEPS:-3000}" --lr "${LR:-1e-3}" --out "$RUN" "${COMMON[@]}"
    ;;
  *) echo "VARIANT must be bltd or blt" >&2; exit 2 ;;
esac

# held-out bits per byte (code, prose), masked-slot accuracy (training / inference layout), slot
# accuracies by start kind and latent
python -m fastblt.training.export --run "$RUN" --out "$EXPORT" --data "$DATA"
