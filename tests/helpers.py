"""Shared test helpers: random ids and the tiny random models every test file builds."""
from __future__ import annotations

import torch

import fastblt


def random_ids(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """BOS followed by n random byte ids: LongTensor [batch, n + 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.ones(batch, 1, dtype=torch.long), torch.randint(4, 260, (batch, n), generator=g)], 1)


def midpoint_threshold(entropies: torch.Tensor) -> float:
    """A threshold halfway between two adjacent entropies near the median: no entropy sits on it,
    so float rounding cannot flip a patch boundary between implementations."""
    v = entropies.flatten().sort().values
    m = len(v) // 2
    return float((v[m] + v[m + 1]) / 2)


def tiny_model(diffusion_block_size: int | None = None, seed: int = 0, **patching) -> fastblt.BLT:
    """A random tiny model (float32, eval) whose threshold sits at the median entropy of random bytes,
    so patches vary in length; ``patching`` overrides PatchingConfig fields (mode, rule, ...)."""
    torch.manual_seed(seed)
    m = fastblt.BLT(fastblt.preset("tiny", diffusion_block_size=diffusion_block_size)).eval()
    # A random entropy model is nearly uniform: its entropies crowd within ~1e-4 nats of log 260, so a
    # new prompt's entropy can land within float rounding (~1e-6) of any threshold and the cached and
    # full-recompute paths patch differently (a near-tie, not a bug). Sharper logits spread the
    # entropies over nats, which makes such ties vanishingly rare.
    with torch.no_grad():
        m.patcher.lm_head.weight.mul_(40.0)
    m.cfg.patching.threshold = midpoint_threshold(m.entropies(random_ids(200, seed=99)))
    for k, v in patching.items():
        setattr(m.cfg.patching, k, v)
    return m
