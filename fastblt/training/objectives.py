"""Training objectives: entropy-model LM, BLT next-byte CE, and BLT-D (Fast BLT §3.2, eq. 5–7).

A training row is a LongTensor [b, N + 1] of BLT ids (BOS first): inputs ``ids = row[:, :-1]``
([b, N]) and next-byte targets ``row[:, 1:]``. Losses are in nats; bits per byte = nats / ln 2.

BLT-D loss and its normalisation (the paper writes plain sums; see paper notes §5.3):

    L = L_clean + L_mask
    L_clean = mean over the b·N clean positions of −log p(x_{i+1} | x_≤i)         (= BLT's loss)
    L_mask  = Σ_{rows r} Σ_{masked slots j of r} (1 / t_r) · CE_j  /  n_valid

where t_r ~ U(ε, 1) (ε = 1e-3) is the mask rate of row r, a slot is masked with probability t_r,
BLOCK_PAD slots (past the row end) are never masked nor scored, and n_valid is the number of
non-pad block slots in the (global) batch. Since E[#masked] = t·n_valid, E[L_mask] is the mean
slot CE averaged over noise levels: the two terms have comparable scale. Under DDP each rank's
L_mask uses the *global* n_valid (all-reduced, ``mask_denominator``) times the world size, so
that DDP's gradient average equals the single-process gradient of the global batch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import BLOCK_PAD_ID, EOS_ID, MASK_ID, byte_ids
from ..model.diffusion import (block_logits_inference, block_targets, corrupt, forward_training_layout,
                               training_blocks)

LN2 = math.log(2.0)


@torch.no_grad()
def sequence_nll(model, data: bytes, append_eos: bool = False) -> tuple[float, int]:
    """Next-byte negative log-likelihood of ``data`` after BOS (plus EOS as a last target if
    ``append_eos``): (total nats, number of predicted positions). Bits per byte = nats / n / ln 2."""
    ids = torch.tensor([byte_ids(data) + ([EOS_ID] if append_eos else [])],
                       device=next(model.parameters()).device)
    logits = model(ids[:, :-1])
    return float(F.cross_entropy(logits[0], ids[0, 1:], reduction="sum")), ids.shape[1] - 1
T_EPS = 1e-3  # lower clamp of the BLT-D mask rate t (the 1/t weight explodes as t → 0)
OBJECTIVES = ("entropy", "blt", "bltd")


def row_generator(seed: int, step: int, row: int, stream: int = 0) -> torch.Generator:
    """A torch Generator that depends on (seed, step, global row index, stream) only, so any split of a
    batch across processes draws the same noise for the same row."""
    state = np.random.SeedSequence([seed, step, row, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_t(seed: int, step: int, rows: list[int], eps: float = T_EPS) -> torch.Tensor:
    """Mask rates t ~ U(eps, 1), one per row, float32 [len(rows)]."""
    u = torch.stack([torch.rand((), generator=row_generator(seed, step, r, 1)) for r in rows])
    return eps + (1.0 - eps) * u


def corrupt_rows(targets: torch.Tensor, t: torch.Tensor, seed: int, step: int, rows: list[int]) -> torch.Tensor:
    """:func:`corrupt` row by row with per-row generators; only a row's own non-pad prefix of slots
    draws noise, so the result does not depend on how many blocks other rows of the batch have.

    targets [b, S] slot ids; t [b]. Returns slot ids [b, S] (MASK_ID where masked)."""
    dev = targets.device
    targets, t = targets.cpu(), t.cpu()  # the per-row generators are CPU generators
    out = targets.clone()
    for i, r in enumerate(rows):
        n = int((targets[i] != BLOCK_PAD_ID).nonzero().max()) + 1 if (targets[i] != BLOCK_PAD_ID).any() else 0
        if n:
            out[i, :n] = corrupt(targets[i : i + 1, :n], t[i : i + 1], row_generator(seed, step, r, 2))[0]
    return out.to(dev)


def next_byte_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-byte CE in nats. logits [b, N, 260], targets [b, N] → scalar."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def entropy_loss(model: nn.Module, row: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-byte CE of the entropy model (``model.patcher``, BLT §2.3) on row [b, N + 1]."""
    loss = next_byte_ce(model.patcher(row[:, :-1]), row[:, 1:])
    return loss, {"ce": loss.detach()}


def blt_loss(model: nn.Module, row: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BLT next-byte CE on row [b, N + 1]; patches from the frozen entropy model (no grad)."""
    ids = row[:, :-1]
    with torch.no_grad():
        starts = model.patch_starts(ids)
    loss = next_byte_ce(model(ids, starts), row[:, 1:])
    return loss, {"ce": loss.detach()}


def masked_diffusion_loss(slot_logits: torch.Tensor, targets: torch.Tensor, slots: torch.Tensor, t: torch.Tensor,
                          denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """L_mask (Fast BLT eq. 6) with our normalisation (module docstring).

    slot_logits [b, S, 260]; targets [b, S] clean slot ids (BLOCK_PAD_ID = not scored); slots [b, S]
    corrupted slot ids (MASK_ID = scored); t [b] mask rates; denominator: number of valid (non-pad)
    slots to divide by (default: those of this batch, at least 1). Returns a scalar (nats).
    """
    scored = (slots == MASK_ID) & (targets != BLOCK_PAD_ID)
    if denominator is None:
        denominator = (targets != BLOCK_PAD_ID).sum().clamp(min=1)
    ce = F.cross_entropy(slot_logits[scored].float(), targets[scored], reduction="none")
    w = (1.0 / t)[:, None].expand_as(scored)[scored]
    return (ce * w).sum() / denominator


def bltd_loss(model: nn.Module, row: torch.Tensor, block_size: int, seed: int, step: int, rows: list[int],
              mask_denominator: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BLT-D loss L_clean + L_mask on row [b, N + 1] (Fast BLT §3.2), one decoder pass.

    rows: global row indices (noise is drawn per (seed, step, row)); mask_denominator: the global
    count of valid block slots (see module docstring) or None for this batch's count.
    """
    ids = row[:, :-1]
    with torch.no_grad():
        starts = model.patch_starts(ids)
    layout = training_blocks(starts, block_size)
    targets = block_targets(row, layout)
    t = sample_t(seed, step, rows).to(row.device)
    slots = corrupt_rows(targets, t, seed, step, rows)
    clean_logits, slot_logits = forward_training_layout(model, ids, starts, slots, layout)
    l_clean = next_byte_ce(clean_logits, row[:, 1:])
    l_mask = masked_diffusion_loss(slot_logits, targets, slots, t, mask_denominator)
    return l_clean + l_mask, {"ce": l_clean.detach(), "mask": l_mask.detach()}


def count_valid_slots(model: nn.Module, row: torch.Tensor, block_size: int) -> torch.Tensor:
    """Number of non-pad block slots of row [b, N + 1] (int64 scalar), for the global L_mask denominator."""
    with torch.no_grad():
        starts = model.patch_starts(row[:, :-1])
        layout = training_blocks(starts, block_size)
        return (block_targets(row, layout) != BLOCK_PAD_ID).sum()


class Objective(nn.Module):
    """Wraps a BLT so that ``forward`` returns the training loss (what DistributedDataParallel wraps).

    forward(row [b, N + 1], step, rows, mask_denominator) → (loss scalar, stats of detached scalars).
    """

    def __init__(self, model: nn.Module, kind: str, block_size: int | None = None, seed: int = 0):
        super().__init__()
        if kind not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {kind!r}")
        if kind == "bltd" and not block_size:
            raise ValueError("the bltd objective needs a block size")
        self.model, self.kind, self.block_size, self.seed = model, kind, block_size, seed

    def forward(self, row: torch.Tensor, step: int = 0, rows: list[int] | None = None,
                mask_denominator: torch.Tensor | None = None):
        if self.kind == "entropy":
            return entropy_loss(self.model, row)
        if self.kind == "blt":
            return blt_loss(self.model, row)
        rows = list(range(row.shape[0])) if rows is None else rows
        return bltd_loss(self.model, row, self.block_size, self.seed, step, rows, mask_denominator)


@torch.no_grad()
def masked_slot_accuracy(model: nn.Module, rows: torch.Tensor, block_size: int, layout: str = "training",
                         t: float = 0.5, max_blocks: int = 32, seed: int = 0) -> float:
    """Accuracy of argmax predictions at masked block slots (label-leak check, paper notes §11.2).

    rows [b, N + 1]; every slot is masked with probability ``t`` (same draw in both layouts).
    A deterministic sample of at most ``max_blocks`` valid blocks is scored:
    - "training": one :func:`forward_training_layout` pass over the whole batch;
    - "inference": per block, prefix = bytes before the block start, :func:`block_logits_inference`
      with the same slot contents.
    The two numbers must be close; a label leak shows as training ≫ inference. Returns a float in
    [0, 1] (0.0 when nothing is masked).
    """
    if layout not in ("training", "inference"):
        raise ValueError(f"layout must be 'training' or 'inference', not {layout!r}")
    was_training = model.training
    model.eval()
    ids = rows[:, :-1]
    starts = model.patch_starts(ids)
    lay = training_blocks(starts, block_size)
    targets = block_targets(rows, lay)
    tt = torch.full((rows.shape[0],), float(t), device=rows.device)
    slots = corrupt(targets.cpu(), tt.cpu(), torch.Generator().manual_seed(seed)).to(rows.device)
    blocks = lay.valid.nonzero().tolist()  # [(row, q)]
    g = torch.Generator().manual_seed(seed + 1)
    pick = torch.randperm(len(blocks), generator=g)[:max_blocks].tolist()
    chosen = sorted(blocks[i] for i in pick)
    B = block_size
    if layout == "training":
        _, slot_logits = forward_training_layout(model, ids, starts, slots, lay)
    correct = total = 0
    for r, q in chosen:
        sl = slice(q * B, (q + 1) * B)
        tgt, sid = targets[r, sl], slots[r, sl]
        if layout == "training":
            logits = slot_logits[r, sl]
        else:
            s = int(lay.start[r, q])
            logits = block_logits_inference(model, ids[r : r + 1, :s], sid[None])[0]
        m = (sid == MASK_ID) & (tgt != BLOCK_PAD_ID)
        correct += int((logits.argmax(-1)[m] == tgt[m]).sum())
        total += int(m.sum())
    model.train(was_training)
    return correct / total if total else 0.0
