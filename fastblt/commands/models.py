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
        kind = "missing" if not row["installed"] else (
            f"BLT-D, B = {row['block_size']}" if row.get("block_size") else "BLT")
        print(f"{row['name']:<8} {kind:<12} {row['description']}\n{'':<8} {row['path']}")
    return 0
