"""fastblt: a faithful Byte Latent Transformer and fast byte-level generation (BLT, BLT-S, BLT-D, BLT-DV).

The public names are imported on first use (PEP 562), so that ``import fastblt.cli`` does not pay
for torch before the command line can handle Ctrl-C quietly.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import load, save, save_hf
    from .config import BLTConfig, PatchingConfig, StackConfig, preset
    from .generation.api import generate, stream_text
    from .model.blt import BLT

_HOME = {"load": ".checkpoint", "save": ".checkpoint", "save_hf": ".checkpoint",
         "BLTConfig": ".config", "PatchingConfig": ".config", "StackConfig": ".config", "preset": ".config",
         "BLT": ".model.blt", "generate": ".generation.api", "stream_text": ".generation.api"}
__all__ = ["BLT", "BLTConfig", "PatchingConfig", "StackConfig", "preset", "load", "save", "save_hf", "generate", "stream_text"]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastblt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
