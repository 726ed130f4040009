"""Byte generation with a BLT (arXiv 2412.09871) by the four systems of Fast BLT (arXiv 2605.08044).

- ``blt`` / ``blt-uncached`` (:mod:`.blt`): cached BLT, one decoder step per byte, and the full
  recompute per byte that the official code does (the reference);
- ``blt-s`` (:mod:`.blt_s`, §5.1): self-speculation — the local decoder drafts past patch
  boundaries, BLT verifies (Algorithm 2); lossless on any BLT;
- ``blt-d`` (:mod:`.blt_d`, §3.1, Algorithm 1): block diffusion — one encoder+global call per block
  of B bytes, decoder passes unmask it (BLT-D models);
- ``blt-dv`` (:mod:`.blt_dv`, §5.2): BLT-D blocks as drafts, verified by the same weights.

Building blocks: :mod:`.speculative` (Algorithm 2 ``verify`` and the one ``speculate`` loop),
:mod:`.state` (:class:`BLTState`, incremental cached BLT), :mod:`.accounting` (:class:`Counters`,
eq. 8), :mod:`.sampling`, :mod:`.stopping` (:class:`Output`, :class:`Context`), :mod:`.methods`
(the registry) and :mod:`.api` (:func:`generate`, :func:`stream_text`).

Names are imported on first use, so that importing this package (the CLI's ``--help``) does not
import torch; ``fastblt.generation.generate`` is the function itself.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "generate": "api", "stream_text": "api", "GenerationResult": "api", "prompt_ids": "api",
    "METHODS": "methods", "register_method": "methods", "method_options": "methods",
    "Sampler": "sampling", "SamplingParams": "sampling", "BLTState": "state", "Counters": "accounting",
    "Context": "stopping", "Output": "stopping", "speculate": "speculative", "verify": "speculative",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
