"""Patch boundaries as pure functions (BLT §2; Fast BLT §2.4 latent rule).

Representation: ``starts`` is a BoolTensor [B, N + 1]; ``starts[:, j]`` says that byte j begins a
new patch. Column N is the *next*, not yet seen byte ("include next token"): it decides whether
the last byte of the sequence closes its patch, which the local decoder needs.

Rules (all causal: whether byte j starts a patch depends on bytes < j only, so appending bytes
never changes earlier patches):
- byte 0 (BOS) is a patch of its own, and byte 1 always starts a patch;
- entropy/global: byte j + 1 starts a patch when H_j > θ (H_j: entropy in nats of the entropy
  model's distribution for byte j + 1);
- entropy/monotonic: when H_j − H_{j−1} > θ_r;
- static: every ``patch_size`` bytes after BOS; space: after a space-like byte;
- max_patch_length: a patch that reached the limit closes (the next byte starts a new one).

Worked example (N = 8, starts at 0, 1, 4 and at the next byte 8):
    encoder patch ids  0 1 1 1 2 2 2 2
    decoder patch ids  0 0 0 1 1 1 1 2
Decoder position i reads the latent of the last patch that is complete before its target byte
i + 1, i.e. (encoder patch of byte i + 1) − 1; the last byte of a patch reads its own patch.
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import OFFSET, PatchingConfig

SPACE_BYTES = (ord(" "), ord("\n"), ord("\t"), ord("\r"))


def entropies_from_logits(logits: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Shannon entropy in nats of softmax(logits) over the last axis. [..., V] float → [...] float32.

    A NumPy float32 array (cached generation on CPU) is computed with the same formula in NumPy and
    returns an array."""
    if isinstance(logits, np.ndarray):
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.add.reduce(np.exp(z), axis=-1, keepdims=True))
        return -np.add.reduce(np.exp(logp) * logp, axis=-1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def entropy_starts(entropies: torch.Tensor, cfg: PatchingConfig) -> torch.Tensor:
    """Patch starts from entropies. entropies: [B, N] float (H_j for each position j).

    Returns BoolTensor [B, N + 1] (before max_patch_length is applied).
    """
    b, n = entropies.shape
    starts = torch.zeros(b, n + 1, dtype=torch.bool, device=entropies.device)
    starts[:, 0] = True
    if n + 1 > 1:
        starts[:, 1] = True
    if n >= 2:
        h = entropies[:, 1:]  # H_1 .. H_{N-1} decide bytes 2 .. N
        if cfg.rule == "global":
            flag = h > cfg.threshold
        else:
            flag = (h - entropies[:, :-1]) > cfg.monotonic_threshold
        starts[:, 2:] = flag
    return starts


def static_starts(batch: int, n: int, patch_size: int, device=None) -> torch.Tensor:
    """Fixed-size patches after the BOS patch: bytes 1, 1 + size, 1 + 2·size, … start patches."""
    j = torch.arange(n + 1, device=device)
    starts = (j >= 1) & ((j - 1) % patch_size == 0)
    starts[0] = True
    return starts.expand(batch, n + 1).clone()


def space_starts(ids: torch.Tensor) -> torch.Tensor:
    """A patch starts after every space-like byte (space, newline, tab, CR). ids: [B, N] BLT ids."""
    b, n = ids.shape
    is_space = torch.zeros_like(ids, dtype=torch.bool)
    for c in SPACE_BYTES:
        is_space |= ids == c + OFFSET
    starts = torch.zeros(b, n + 1, dtype=torch.bool, device=ids.device)
    starts[:, 0] = True
    if n >= 1:
        starts[:, 1] = True
        starts[:, 2:] = is_space[:, 1:]
    return starts


def limit_patch_length(starts: torch.Tensor, max_len: int | None) -> torch.Tensor:
    """Split patches longer than ``max_len`` bytes into chunks of max_len from their start."""
    if max_len is None:
        return starts
    n1 = starts.shape[1]
    j = torch.arange(n1, device=starts.device).expand_as(starts)
    # start of the enclosing (unsplit) patch for every position: running max of start indices
    seg_start = torch.where(starts, j, torch.zeros_like(j)).cummax(dim=1).values
    return starts | ((j - seg_start) % max_len == 0)


def compute_starts(cfg: PatchingConfig, ids: torch.Tensor, entropies: torch.Tensor | None = None) -> torch.Tensor:
    """Patch starts [B, N + 1] for ids [B, N] under ``cfg`` (entropies [B, N] needed in entropy mode)."""
    b, n = ids.shape
    if cfg.mode == "entropy":
        if entropies is None:
            raise ValueError("entropy patching needs entropies")
        starts = entropy_starts(entropies, cfg)
    elif cfg.mode == "static":
        starts = static_starts(b, n, cfg.patch_size, ids.device)
    else:
        starts = space_starts(ids)
    return limit_patch_length(starts, cfg.max_patch_length)


def encoder_patch_ids(starts: torch.Tensor) -> torch.Tensor:
    """Patch index of every byte: LongTensor [B, N] from starts [B, N + 1]."""
    return starts[:, :-1].long().cumsum(1) - 1


def decoder_patch_ids(starts: torch.Tensor) -> torch.Tensor:
    """Latent read by each decoder position: (encoder patch of byte i + 1) − 1. [B, N] from [B, N + 1]."""
    return starts[:, 1:].long().cumsum(1) - 1  # byte 0 always starts patch 0, so patch(i+1) − 1 = this


def num_patches(starts: torch.Tensor) -> torch.Tensor:
    """Number of patches holding at least one of the N bytes, per row. LongTensor [B]."""
    return starts[:, :-1].long().sum(1)


def patch_lengths(starts: torch.Tensor) -> torch.Tensor:
    """Patch lengths in the transformers layout: [B, P] covering the N bytes, plus a trailing 0 when
    the next byte starts a new patch; rows right-padded with zeros."""
    b, n1 = starts.shape
    rows = []
    for r in range(b):
        idx = torch.nonzero(starts[r], as_tuple=False).flatten().tolist()
        ends = idx[1:] + [n1 - 1]
        rows.append([e - s for s, e in zip(idx, ends)])
    width = max(len(x) for x in rows)
    return torch.tensor([x + [0] * (width - len(x)) for x in rows], dtype=torch.long)


def starts_from_lengths(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`patch_lengths`: lengths [B, P] (sum ≤ N + 1 per row) → starts [B, N + 1].

    A zero-length patch right after the N bytes marks the next byte as a patch start.
    Raises ValueError if a row's lengths do not cover exactly N or N bytes plus a trailing empty patch.
    """
    b = lengths.shape[0]
    starts = torch.zeros(b, n + 1, dtype=torch.bool, device=lengths.device)
    for r in range(b):
        pos = 0
        row = lengths[r].tolist()
        last_nonzero = max((i for i, x in enumerate(row) if x > 0), default=-1)
        for i, ln in enumerate(row):
            if ln == 0:
                if i == last_nonzero + 1 and pos == n:
                    starts[r, n] = True
                continue
            starts[r, pos] = True
            pos += ln
        if pos != n:
            raise ValueError(f"patch lengths of row {r} cover {pos} bytes, expected {n}")
    return starts


def is_patch_start(cfg: PatchingConfig, prev_entropy: float | None, prev2_entropy: float | None,
                   prev_byte_id: int, open_len: int, position: int) -> bool:
    """Incremental rule: does byte ``position`` start a new patch?

    prev_entropy: H of byte position−1 (the entropy model's prediction of this byte);
    prev2_entropy: H of byte position−2 (monotonic rule); prev_byte_id: id of byte position−1;
    open_len: bytes already in the open patch. Agrees with :func:`compute_starts` column by column.
    """
    if position <= 1:
        return True
    if cfg.mode == "entropy":
        if cfg.rule == "global":
            start = prev_entropy > cfg.threshold
        else:
            start = (prev_entropy - prev2_entropy) > cfg.monotonic_threshold
    elif cfg.mode == "static":
        start = (position - 1) % cfg.patch_size == 0
    else:
        start = prev_byte_id - OFFSET in SPACE_BYTES
    if cfg.max_patch_length is not None and open_len >= cfg.max_patch_length:
        start = True
    return bool(start)
