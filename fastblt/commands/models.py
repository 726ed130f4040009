"""``fastblt models``: list the named models shipped with the package (``fastblt.load(NAME)``)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object per model")


def run(args: argparse.Namespace) -> int:
    import json

    from ..named_models import describe

    for row in describe():
        if args.json:
            print(json.dumps(row))
            continue
        if not row["installed"]:
            kind, methods = "missing", ""
        elif row.get("block_size"):
            kind, methods = f"BLT-D, B = {row['block_size']}", "blt, blt-uncached, blt-s, blt-d, blt-dv"
        else:
            kind, methods = "BLT", "blt, blt-uncached, blt-s"
        print(f"{row['name']:<8} {kind:<12} {row['description']}\n{'':<21} methods: {methods}\n{'':<21} {row['path']}")
    return 0
