"""``fastblt export``: a trained run as a shipped bf16 model folder with its held-out figures
(:func:`fastblt.training.export.export_run`; also ``python -m fastblt.training.export``)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="training run folder (uses RUN/last)")
    p.add_argument("--out", required=True, help="export folder, e.g. fastblt/assets/default_model")
    p.add_argument("--data", default="data_cache/corpus", help="corpus (val rows for masked-slot accuracy)")
    p.add_argument("--max-mb", type=float, default=25.0, help="refuse an export larger than this (default 25 MB)")


def run(args: argparse.Namespace) -> int:
    from ..training.export import export_run

    size, figures = export_run(args.run, args.out, args.data, args.max_mb)
    print(f"exported {args.run} → {args.out} ({size:.1f} MB, bf16)")
    for k, v in figures.items():
        print(f"  {k:>24}: {v:.4f}")
    return 0
