"""``fastblt presets``: parameter breakdown of the named presets next to the paper's counts."""
from __future__ import annotations

import argparse

from ..config import PAPER_COUNTS, preset

COMPONENTS = ("hash_tables", "local_encoder", "global", "local_decoder", "entropy_model")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", default=["1b", "3b"], help="presets to show (default: 1b 3b; also tiny, small)")


def _fmt(n: float) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def run(args: argparse.Namespace) -> int:
    from ..model.params import breakdown_for_config

    print(f"{'preset':<7} {'component':<15} {'ours':>10} {'paper':>10} {'diff':>7}")
    for name in args.names:
        counts = breakdown_for_config(preset(name))  # built on the meta device: no memory
        paper = PAPER_COUNTS.get(name, {})
        for comp in COMPONENTS:
            ref = paper.get(comp)
            diff = f"{100 * (counts[comp] - ref) / ref:+.1f}%" if ref else ""
            print(f"{name:<7} {comp:<15} {_fmt(counts[comp]):>10} {_fmt(ref) if ref else '-':>10} {diff:>7}")
        streamed = counts["local_encoder"] + counts["global"] + counts["local_decoder"]
        print(f"{name:<7} {'streamed total':<15} {_fmt(streamed):>10}   (hash tables and entropy model excluded)")
    return 0
