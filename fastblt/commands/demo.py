"""``fastblt demo``, the main job: the four generation systems on real prompts with the shipped model
(:mod:`fastblt.evaluation.demo`)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model folder (default: the shipped default model)")
    p.add_argument("--max-new-bytes", type=int, default=128, help="bytes generated per prompt (default 128)")
    p.add_argument("--humaneval", type=int, default=2, help="HumanEval prompts (default 2)")
    p.add_argument("--translation", type=int, default=1, help="prompts per translation direction (default 1)")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import DEFAULT_MODEL
    from ..evaluation.demo import run as demo

    args.model = args.model or str(DEFAULT_MODEL)
    return demo(args)
