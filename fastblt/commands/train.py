"""``fastblt train``: train an entropy model, a BLT or a BLT-D model (:mod:`fastblt.training.train`).

The flags live here, so that ``fastblt train --help`` needs no torch; ``training.train.run(args)``
takes the parsed namespace (``training.train.add_arguments`` is this function, re-exported).
"""
from __future__ import annotations

import argparse

from ..config import OBJECTIVES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objective", choices=OBJECTIVES, default="bltd", help="what to train (default bltd)")
    p.add_argument("--preset", default="small", help="model preset: tiny, small (default small)")
    p.add_argument("--data", default="data_cache/corpus", help="corpus folder from `fastblt data build`")
    p.add_argument("--out", required=True, help="run folder (checkpoints in OUT/last, log.jsonl, loss.png)")
    p.add_argument("--entropy-model", default=None,
                   help="trained entropy run folder (blt/bltd): weights → model.patcher, calibrated threshold")
    p.add_argument("--block-size", type=int, choices=(4, 8, 16), default=8, help="BLT-D block size B")
    p.add_argument("--blocks", choices=("aligned", "patch"), default="aligned",
                   help="bltd: 'patch' = one block per patch start, closed latent (the paper); 'aligned' = "
                        "blocks at sampled starts, inside patches too, each reading the latent its schedule "
                        "reads at inference (default)")
    p.add_argument("--block-stride", type=int, default=16,
                   help="bltd, aligned: one block per this many bytes of a row (default 16)")
    p.add_argument("--fused-frac", type=float, default=0.5,
                   help="bltd, aligned: share of blocks reading the fused BLT-DV latent (default 0.5)")
    p.add_argument("--mask-norm", choices=("sum", "mean"), default="sum",
                   help="bltd: L_mask weight: 'sum' = the paper's literal L_clean + L_mask (default), "
                        "'mean' = per valid slot")
    p.add_argument("--distill", type=float, default=0.0,
                   help="bltd: weight λ of the model's own next-byte distribution in the slot targets "
                        "(self-distillation; default 0)")
    p.add_argument("--self-data", default=None,
                   help="bltd: folder of the model's own greedy continuations (python -m "
                        "fastblt.training.self_data); --self-rows rows of every batch come from it")
    p.add_argument("--self-rows", type=int, default=0,
                   help="bltd: rows per batch from --self-data (their generated part is not scored by L_clean)")
    p.add_argument("--init-from", default=None,
                   help="warm start from a trained BLT/BLT-D model folder of the same shape (its entropy "
                        "model and patching come along)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps; the cosine schedule ends here")
    p.add_argument("--batch-size", type=int, default=8, help="global batch (rows)")
    p.add_argument("--seq-len", type=int, default=512, help="bytes per row (inputs)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (paper: 4e-4)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 5%% of --steps, ≥ 1)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100, help="val bpb every N steps (0: only at the end)")
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps (and at the end)")
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="stop cleanly with a checkpoint when this wall-clock budget is spent")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="stop cleanly (with a checkpoint) after this many steps in this invocation; "
                        "the schedule still follows --steps (continue with --resume)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its checkpoint and log are deleted); without it, "
                        "or --resume, an existing run is refused")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--no-plot", action="store_true", help="skip loss.png")
    p.add_argument("--debug-nan-at-step", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from ..training.train import run as train

    return train(args)
