"""``fastblt calibrate``: the global entropy threshold θ for a trained entropy model
(:func:`fastblt.training.calibrate.calibrate`; also ``python -m fastblt.training.calibrate``)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entropy-model", required=True, help="entropy run folder (from train --objective entropy)")
    p.add_argument("--data", default="data_cache/corpus", help="corpus folder (default: data_cache/corpus)")
    p.add_argument("--rows", type=int, default=64, help="training rows sampled (default 64)")
    p.add_argument("--seq-len", type=int, default=1024, help="bytes per row (default 1024)")
    p.add_argument("--target", type=float, default=4.0, help="mean patch size in bytes (default 4, the paper's)")
    p.add_argument("--max-patch-length", type=int, default=8, help="max patch length in bytes (default 8, the paper's)")


def run(args: argparse.Namespace) -> int:
    from ..training.calibrate import calibrate, histogram_text

    res = calibrate(args.entropy_model, args.data, args.rows, args.seq_len, args.target, args.max_patch_length)
    print(f"threshold {res['threshold']:.5f} nats → mean patch size {res['mean_patch_size']:.3f} bytes")
    print(histogram_text(res["histogram"]))
    return 0
