#!/usr/bin/env bash
# The figures in README.md. The paper's sweep on the shipped BLT-D model (fixed-length 512-byte
# greedy generations, paper accounting) in two processes of one CPU thread each (tasks split in two
# groups, so that a 2-core machine finishes in ~15 minutes), then BLT vs BLT-S on the plain BLT
# trained with the same data and budget. LIMIT samples per task (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-4}
export OMP_NUM_THREADS=1
python -m fastblt.cli bench --model fastblt/assets/default_model --tasks humaneval,translation_fr,translation_de \
  --limit "$LIMIT" --max-new-bytes 512 --compare-hf 2 --out docs/bench_bltd --no-progress &
python -m fastblt.cli bench --model fastblt/assets/default_model --tasks code,prose \
  --limit "$LIMIT" --max-new-bytes 512 --compare-hf 0 --out docs/bench_bltd_heldout --no-progress &
wait
if [ -d fastblt/assets/blt_model ]; then
  python -m fastblt.cli bench --model fastblt/assets/blt_model --tasks code,prose,translation_fr \
    --limit "$LIMIT" --max-new-bytes 512 --compare-hf 2 --out docs/bench_blt --no-progress
fi
