"""Frozen held-out evaluation sets shipped in ``fastblt/data/heldout/`` (see the README there).

Names: ``translation_test``, ``translation_shots``, ``code_test``, ``prose_test``.
"""
from __future__ import annotations

import json
from importlib import resources

NAMES = ("translation_test", "translation_shots", "code_test", "prose_test")


def load_heldout(name: str) -> list[dict]:
    """The records of ``heldout/<name>.jsonl`` (the ``.jsonl`` suffix is optional), in file order."""
    name = name.removesuffix(".jsonl")
    if name not in NAMES:
        raise ValueError(f"unknown held-out set {name!r}; choose from {', '.join(NAMES)}")
    text = resources.files("fastblt.data").joinpath("heldout", f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
