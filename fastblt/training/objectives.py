"""Training objectives: entropy-model LM, BLT next-byte CE, and BLT-D (Fast BLT §3.2, eq. 5–7).

A training row is a LongTensor [b, N + 1] of BLT ids (BOS first): inputs ``ids = row[:, :-1]``
([b, N]) and next-byte targets ``row[:, 1:]``. Losses are in nats; bits per byte = nats / ln 2.

BLT-D loss (Fast BLT §3.2, eq. 5–7; configured by :class:`BLTDLoss`):

    L = L_clean + L_mask
    L_clean = mean over the b·N clean positions of −log p(x_{i+1} | x_≤i)         (= BLT's loss)
    L_mask  = Σ_{rows r} w_r Σ_{masked slots j of r} (1 / t_r) · CE_j

where t_r ~ U(ε, 1) (ε = 1e-3) is the mask rate of row r, a slot is masked with probability t_r,
and BLOCK_PAD slots (past the row end) are never masked nor scored. The paper writes plain sums;
the row weight w_r says how they are normalised:
- ``mask_norm="sum"`` (the paper's literal L_clean + L_mask, both sums divided by the same b·N):
  w_r = (blocks the paper's layout puts in row r / blocks scored in row r) / (b·N), so that with
  sampled blocks L_mask is an unbiased estimate of the paper's sum over one block per patch;
- ``mask_norm="mean"``: w_r = 1 / n_valid, n_valid = non-pad block slots in the (global) batch, so
  E[L_mask] is the mean slot CE averaged over noise levels (B = 4/8/16 give each slot 0.83×/0.42×/
  0.21× the weight of "sum" with the paper's layout).
Under DDP each rank uses the *global* denominator (all-reduced, ``mask_denominator``) times the
world size, so that DDP's gradient average equals the single-process gradient of the global batch.

Which blocks are scored (``blocks``): "patch" is the paper's layout (one block per patch start,
reading the closed latent); "aligned" samples ``N / block_stride`` starts per row anywhere, each
reading the latent its schedule reads at inference (provisional or fused; model/diffusion.py).
``distill`` λ mixes the model's own next-byte distribution (the clean row that predicts the same
byte, detached) into the slot targets: (1 − λ)·onehot(x) + λ·softmax(clean logits). BLT-DV accepts
a draft when it matches the model's own greedy byte, so this teaches the block head what the
verifier will say (self-distillation, as Medusa/EAGLE drafters are trained); losslessness does
not depend on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import BLOCK_PAD_ID, MASK_ID, OBJECTIVES
from ..evaluation.likelihood import sequence_nll  # noqa: F401  (moved to evaluation; re-exported)
from ..model.diffusion import (
    BlockLayout,
    aligned_blocks,
    block_logits_inference,
    block_targets,
    corrupt,
    forward_training_layout,
    training_blocks,
)

LN2 = math.log(2.0)


T_EPS = 1e-3  # lower clamp of the BLT-D mask rate t (the 1/t weight explodes as t → 0)


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


def next_byte_ce(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-byte CE in nats. logits [b, N, 260], targets [b, N] → scalar; ``scored`` [b, N]
    bool limits the mean to those positions (None: all)."""
    if scored is not None:
        return F.cross_entropy(logits[scored].float(), targets[scored])
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


@dataclass(frozen=True)
class BLTDLoss:
    """How the BLT-D objective builds and weighs its blocks (module docstring).

    block_size: B; blocks: "aligned" | "patch"; block_stride: aligned only, one block per this many
    bytes of a row; fused_frac: aligned only, share of blocks reading the fused-schedule latent;
    mask_norm: "sum" | "mean"; distill: λ in [0, 1]. Raises ValueError for other values.
    """

    block_size: int
    blocks: str = "aligned"
    block_stride: int = 16
    fused_frac: float = 0.5
    mask_norm: str = "sum"
    distill: float = 0.0

    def __post_init__(self):
        if self.block_size not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"block size must be one of 1, 2, 4, 8, 16, 32, not {self.block_size}")
        if self.blocks not in ("aligned", "patch"):
            raise ValueError(f"blocks must be 'aligned' or 'patch', not {self.blocks!r}")
        if self.mask_norm not in ("sum", "mean"):
            raise ValueError(f"mask_norm must be 'sum' or 'mean', not {self.mask_norm!r}")
        if not (isinstance(self.block_stride, int) and self.block_stride >= 1):
            raise ValueError(f"block_stride must be an integer >= 1, not {self.block_stride!r}")
        if not (0.0 <= self.fused_frac <= 1.0 and 0.0 <= self.distill <= 1.0):
            raise ValueError(f"fused_frac and distill must lie in [0, 1] (got {self.fused_frac}, {self.distill})")


def masked_diffusion_loss(slot_logits: torch.Tensor, targets: torch.Tensor, slots: torch.Tensor, t: torch.Tensor,
                          denominator: torch.Tensor | float | None = None, row_scale: torch.Tensor | None = None,
                          soft: torch.Tensor | None = None, distill: float = 0.0) -> torch.Tensor:
    """L_mask (Fast BLT eq. 6) with our normalisation (module docstring).

    slot_logits [b, S, 260]; targets [b, S] clean slot ids (BLOCK_PAD_ID = not scored); slots [b, S]
    corrupted slot ids (MASK_ID = scored); t [b] mask rates; denominator: what the weighted sum is
    divided by (default: this batch's valid (non-pad) slots, at least 1); row_scale [b]: extra
    per-row weights (default 1); soft [b, S, 260]: teacher logits, mixed into the one-hot targets
    with weight ``distill``. Returns a scalar (nats).
    """
    scored = (slots == MASK_ID) & (targets != BLOCK_PAD_ID)
    if denominator is None:
        denominator = (targets != BLOCK_PAD_ID).sum().clamp(min=1)
    logits = slot_logits[scored].float()
    ce = F.cross_entropy(logits, targets[scored], reduction="none")
    if distill > 0.0:
        teacher = torch.softmax(soft[scored].float().detach(), -1)
        ce = (1.0 - distill) * ce - distill * (teacher * torch.log_softmax(logits, -1)).sum(-1)
    w = 1.0 / t if row_scale is None else row_scale / t
    return (ce * w[:, None].expand_as(scored)[scored]).sum() / denominator


def bltd_layout(model: nn.Module, ids: torch.Tensor, starts: torch.Tensor, cfg: BLTDLoss, seed: int, step: int,
                rows: list[int]) -> BlockLayout:
    """The blocks scored for inputs ids [b, N] (sampled per (seed, step, global row))."""
    if cfg.blocks == "patch":
        return training_blocks(starts, cfg.block_size)
    n_blocks = max(1, ids.shape[1] // cfg.block_stride)
    return aligned_blocks(starts, cfg.block_size, n_blocks, cfg.fused_frac,
                          [row_generator(seed, step, r, 3) for r in rows])


def mask_row_scale(starts: torch.Tensor, layout: BlockLayout, cfg: BLTDLoss) -> torch.Tensor | None:
    """Per-row weights for mask_norm="sum" with sampled blocks: paper blocks / scored blocks, [b]."""
    if cfg.mask_norm != "sum" or cfg.blocks == "patch":
        return None
    paper_blocks = starts[:, 1:].sum(1).float()  # one block per patch q ≥ 1 with s_q ≤ N
    return paper_blocks / layout.valid.sum(1).clamp(min=1).float()


def mask_denominator_of(model: nn.Module, row: torch.Tensor, cfg: BLTDLoss, seed: int = 0, step: int = 0,
                        rows: list[int] | None = None) -> torch.Tensor:
    """This batch's share of the L_mask denominator (float scalar): b·N for "sum", else the number
    of non-pad block slots. Sum it over DDP ranks for the global denominator."""
    if cfg.mask_norm == "sum":
        return torch.tensor(float(row.shape[0] * (row.shape[1] - 1)), device=row.device)
    rows = list(range(row.shape[0])) if rows is None else rows
    with torch.no_grad():
        ids = row[:, :-1]
        layout = bltd_layout(model, ids, model.patch_starts(ids), cfg, seed, step, rows)
        return (block_targets(row, layout) != BLOCK_PAD_ID).sum().float().clamp(min=1)


def bltd_loss(model: nn.Module, row: torch.Tensor, cfg: BLTDLoss, seed: int, step: int, rows: list[int],
              mask_denominator: torch.Tensor | None = None,
              clean_scored: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BLT-D loss L_clean + L_mask on row [b, N + 1] (Fast BLT §3.2), one decoder pass.

    rows: global row indices (noise is drawn per (seed, step, row)); mask_denominator: the global
    denominator (:func:`mask_denominator_of` summed over ranks) or None for this batch's;
    clean_scored: bool [b, N], the positions L_clean scores (None: all; self-distillation rows do
    not score their generated part, see :mod:`fastblt.training.self_data`).
    """
    ids = row[:, :-1]
    with torch.no_grad():
        starts = model.patch_starts(ids)
    layout = bltd_layout(model, ids, starts, cfg, seed, step, rows)
    targets = block_targets(row, layout)
    t = sample_t(seed, step, rows).to(row.device)
    slots = corrupt_rows(targets, t, seed, step, rows)
    clean_logits, slot_logits = forward_training_layout(model, ids, starts, slots, layout)  # [b,N,V], [b,Q·B,V]
    l_clean = next_byte_ce(clean_logits, row[:, 1:], clean_scored)
    soft = None
    if cfg.distill > 0.0:  # the clean row that predicts the same byte as each slot: position − 1
        src = (layout.slot_positions - 1).clamp(0, ids.shape[1] - 1)
        soft = clean_logits.gather(1, src[..., None].expand(-1, -1, clean_logits.shape[-1]))
    if mask_denominator is None:
        mask_denominator = mask_denominator_of(model, row, cfg, seed, step, rows)
    l_mask = masked_diffusion_loss(slot_logits, targets, slots, t, mask_denominator,
                                   mask_row_scale(starts, layout, cfg), soft, cfg.distill)
    return l_clean + l_mask, {"ce": l_clean.detach(), "mask": l_mask.detach()}


class Objective(nn.Module):
    """Wraps a BLT so that ``forward`` returns the training loss (what DistributedDataParallel wraps).

    forward(row [b, N + 1], step, rows, mask_denominator) → (loss scalar, stats of detached scalars).
    """

    def __init__(self, model: nn.Module, kind: str, block_size: int | None = None, seed: int = 0,
                 bltd: BLTDLoss | None = None):
        super().__init__()
        if kind not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {kind!r}")
        if kind == "bltd" and not (block_size or bltd):
            raise ValueError("the bltd objective needs a block size")
        if kind == "bltd" and bltd is None:
            bltd = BLTDLoss(block_size)
        self.model, self.kind, self.seed, self.bltd = model, kind, seed, bltd
        self.block_size = bltd.block_size if bltd is not None else block_size

    def forward(self, row: torch.Tensor, step: int = 0, rows: list[int] | None = None,
                mask_denominator: torch.Tensor | None = None, clean_scored: torch.Tensor | None = None):
        if self.kind == "entropy":
            return entropy_loss(self.model, row)
        if self.kind == "blt":
            return blt_loss(self.model, row)
        rows = list(range(row.shape[0])) if rows is None else rows
        return bltd_loss(self.model, row, self.bltd, self.seed, step, rows, mask_denominator, clean_scored)


@torch.no_grad()
def masked_slot_accuracy(model: nn.Module, rows: torch.Tensor, block_size: int, layout: str = "training",
                         t: float = 0.5, max_blocks: int = 32, seed: int = 0) -> float:
    """Accuracy of argmax predictions at masked block slots (label-leak check: slots must not see the clean rows they reconstruct, Fast BLT §3.2, Fig. 5).

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


@torch.no_grad()
def slot_accuracy_report(model: nn.Module, rows: torch.Tensor, block_size: int, n_blocks: int = 16,
                         t: float = 1.0, seed: int = 0, check_inference: bool = True) -> dict:
    """Per-slot accuracy of BLT-D blocks by start kind and latent (issue: train/inference alignment).

    rows [b, N + 1]; ``n_blocks`` starts per row drawn as in aligned training (same starts for both
    latents); each slot is masked with probability ``t`` (1.0: every slot masked, the one-step
    draft). For latent ∈ {"provisional", "fused"} and start ∈ {"boundary" (the block starts a
    patch), "mid" (inside a patch)}, returns lists over slots 1..B of
    - ``training``: argmax accuracy in the training layout (one :func:`forward_training_layout` pass);
    - ``inference``: the same blocks through :func:`block_logits_inference` on the prefix (must equal
      ``training``: the label-leak check), when ``check_inference``;
    - ``greedy``: agreement of the slot's argmax with the model's own next-byte argmax at the same
      position under teacher forcing (what BLT-DV's verifier compares against, for slot 1 exactly);
    plus ``ar`` (next-byte accuracy of the clean row predicting slot 1's byte) and ``blocks``.
    """
    was_training = model.training
    model.eval()
    ids = rows[:, :-1]
    starts = model.patch_starts(ids)
    b, n = ids.shape
    B = block_size
    out: dict = {}
    for kind, frac in (("provisional", 0.0), ("fused", 1.0)):
        gens = [row_generator(seed, 0, r, 3) for r in range(b)]
        lay = aligned_blocks(starts, B, n_blocks, frac, gens)
        targets = block_targets(rows, lay)
        g = torch.Generator().manual_seed(seed + 7)
        slots = corrupt(targets.cpu(), torch.full((b,), float(t)), g).to(rows.device)
        clean_logits, slot_logits = forward_training_layout(model, ids, starts, slots, lay)
        clean_arg = clean_logits.argmax(-1)
        at_start = starts.gather(1, lay.start)
        stats = {w: {"training": torch.zeros(B), "inference": torch.zeros(B), "greedy": torch.zeros(B),
                     "count": torch.zeros(B), "ar": 0.0, "blocks": 0} for w in ("boundary", "mid")}
        for r in range(b):
            for q in range(lay.start.shape[1]):
                m = int(lay.start[r, q])
                where = "boundary" if bool(at_start[r, q]) else "mid"
                st = stats[where]
                sl = slice(q * B, (q + 1) * B)
                tgt, sid, lg = targets[r, sl], slots[r, sl], slot_logits[r, sl]
                scored = (sid == MASK_ID) & (tgt != BLOCK_PAD_ID)
                pos = torch.arange(m, m + B).clamp(max=n - 1)
                pred = lg.argmax(-1)
                st["training"] += ((pred == tgt) & scored).float()
                st["greedy"] += ((pred == clean_arg[r, pos - 1]) & scored & (torch.arange(m, m + B) <= n)).float()
                st["count"] += scored.float()
                st["ar"] += float(clean_arg[r, m - 1] == rows[r, m])
                st["blocks"] += 1
                if check_inference:
                    il = block_logits_inference(model, ids[r:r + 1, :m], sid[None], latent=kind)[0]
                    st["inference"] += ((il.argmax(-1) == tgt) & scored).float()
        out[kind] = {}
        for where, st in stats.items():
            c = st["count"].clamp(min=1)
            out[kind][where] = {"blocks": st["blocks"], "ar": st["ar"] / max(1, st["blocks"]),
                                "training": (st["training"] / c).tolist(), "greedy": (st["greedy"] / c).tolist()}
            if check_inference:
                out[kind][where]["inference"] = (st["inference"] / c).tolist()
    model.train(was_training)
    return out
