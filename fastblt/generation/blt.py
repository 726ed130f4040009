"""Plain BLT generation, one byte at a time (BLT, arXiv 2412.09871 §2.4: entropy patching is
incremental, so a cached step equals the full forward; §3: the components).

``generate_blt`` (method "blt"): the incremental algorithm with KV caches. The prompt is prefilled
with one call per component; then every new byte costs one entropy-model step, one encoder step
and one decoder step, and the encoder pooling + global transformer run only when a patch closes.

``generate_blt_uncached`` (method "blt-uncached"): what the official code and transformers do —
the full model (entropy model, encoder, global, decoder) over the whole sequence for every byte.
It is the semantic reference and the baseline of the benchmarks.
"""
from __future__ import annotations

import torch

from ..model.blt import BLT
from .state import BLTState
from .stopping import Context


def generate_blt(model: BLT, ids: list[int], ctx: Context) -> None:
    """Cached BLT. ids: BOS + prompt byte ids; emits into ``ctx.out`` until it is done."""
    state = BLTState(model, ctx.counters, capacity=len(ids) + ctx.out.remaining)
    logits = state.extend(ids)
    while True:
        nxt = ctx.sampler.pick(logits[:, -1])
        if ctx.out.emit([nxt]):
            return
        logits = state.extend([nxt])


def generate_blt_uncached(model: BLT, ids: list[int], ctx: Context) -> None:
    """Full recompute per byte: ``model(ids)[:, -1]`` (one call of every component per byte)."""
    ids = list(ids)
    device = next(model.parameters()).device
    c = ctx.counters
    while True:
        logits = model(torch.tensor([ids], device=device))[:, -1]
        c.decoder_nfe += 1
        c.global_nfe += 1
        c.encoder_steps += 1
        c.entropy_nfe += int(model.cfg.patching.mode == "entropy")
        nxt = ctx.sampler.pick(logits)
        if ctx.out.emit([nxt]):
            return
        ids.append(nxt)
