"""BLT-D: block-diffusion generation (Fast BLT, arXiv 2605.08044 §3.1, Algorithm 1).

Per block, after a committed prefix of N bytes:

1. one entropy-model + local-encoder + pooling/global call over the bytes committed since the last
   block (:meth:`BLTState.close_patches` with ``provisional=True``): the new closed patches get
   latents that stay cached, and the open last patch is pooled as if closed, giving the latent o_M
   every block slot reads (§3.1.1; it is recomputed each block because the patch may still grow);
2. B slots at positions N .. N + B − 1, all MASK_ID, go through the local decoder (§3.1.1, Fig. 3 masks:
   prefix rows causal with the BLT latent rule, block rows see every prefix row and the whole
   block and cross-attend o_M). The *first* pass of a block also carries the clean decoder rows of
   the bytes committed by the previous block, so they enter the decoder KV cache in the same call;
   slot rows never stay in the cache (cropped after every pass). One pass = one decoder NFE;
3. after each pass some masked slots are unmasked (§3.1.2): ``confidence`` — every masked slot whose
   max probability exceeds α, ``entropy`` — the largest set of lowest-entropy masked slots whose
   entropies (nats) sum to ≤ γ, ``one-step`` — all slots. At least one slot is unmasked per pass
   (the most confident / lowest-entropy one), so a block needs at most B passes;
   ``max_steps_per_block`` S caps the passes (the S-th unmasks every remaining slot);
4. the filled block is accepted (BLT-D) or verified (BLT-DV, :mod:`.blt_dv`).

Confidence and entropy are measured on the model's distribution (softmax of the logits with the
non-byte specials suppressed, temperature 1); slot values are drawn with ``ctx.sampler`` (argmax
when greedy; seeded temperature / top-k / top-p sampling otherwise). EOS or a stop string inside a
block ends generation there (``ctx.out.emit``), and the last block shrinks to ``ctx.out.remaining``.

With random or plain-BLT weights BLT-D output is *not* BLT's output (a slot row is a different
computation from a clean row: MASK input, provisional latent); BLT-DV restores exactness.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..config import MASK_ID
from ..model.blt import BLT
from .methods import CHOICES, FirstSlot, Unmask
from .sampling import suppress
from .state import BLTState
from .stopping import Context

UNMASK_RULES = CHOICES["Unmask"]

Pick = Callable[[torch.Tensor], list[int]]  # logits [m, 260] → m slot values


@dataclass(frozen=True)
class UnmaskRule:
    """How many masked slots a decoder pass fills (Fast BLT §3.1.2).

    kind: "confidence" | "entropy" | "one-step"; alpha: confidence threshold α (max probability,
    ≥ 0; α ≥ 1 fills one slot per pass); gamma: entropy budget γ in nats (≥ 0);
    max_steps: passes per block (≥ 1; None = no cap). Raises ValueError for invalid values.
    """

    kind: str = "confidence"
    alpha: float = 0.7
    gamma: float = 1.0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in UNMASK_RULES:
            raise ValueError(f"unmask must be one of {UNMASK_RULES}, got {self.kind!r}")
        for name, v in (("alpha", self.alpha), ("gamma", self.gamma)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        s = self.max_steps
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1):
            raise ValueError(f"max_steps_per_block must be an integer >= 1 or None, got {s!r}")

    def choose(self, logits: torch.Tensor, ignore_eos: bool = False) -> list[int]:
        """Masked slots to fill now. logits [m, 260] of the m masked slots → sorted indices in 0..m−1.
        Confidence and entropy are measured over the ids that can be generated (EOS excluded when
        ``ignore_eos``)."""
        m = logits.shape[0]
        if self.kind == "one-step" or m == 1:
            return list(range(m))
        p = suppress(logits, ignore_eos).softmax(-1)
        if self.kind == "confidence":
            conf = p.max(-1).values
            chosen = torch.nonzero(conf > self.alpha).flatten().tolist()
            return chosen or [int(conf.argmax())]
        ent = torch.special.entr(p).sum(-1)  # nats; entr(0) = 0
        order = torch.sort(ent, stable=True).indices
        n = max(1, int((ent[order].cumsum(0) <= self.gamma).sum()))
        return sorted(order[:n].tolist())


def check_block_size(model: BLT, method: str, block_size: int | None) -> int:
    """The block size B to use: ``block_size`` or the model's trained ``cfg.diffusion_block_size``.

    Raises ValueError for a model without BLT-D training (no MASK slot embedding) or B < 1.
    """
    trained = model.cfg.diffusion_block_size
    if trained is None:
        raise ValueError(f"method {method!r} needs a BLT-D model (trained with the block-diffusion objective); "
                         "this model has cfg.diffusion_block_size = None, so it has no MASK slot embeddings "
                         "and was never trained to fill blocks. Use method 'blt-s' (self-speculation works on "
                         "any BLT) or 'blt'.")
    b = trained if block_size is None else block_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {b!r}")
    return b


class FilledBlock(NamedTuple):
    """:func:`fill_block`'s result: ids (B values), passes (decoder passes spent), clean_logits (the
    first pass's last clean row [1, 260] float32 when it filled slot 0, else None), confidence (per
    slot, the max probability of the distribution it was drawn from, specials suppressed; None
    unless asked for)."""

    ids: list[int]
    passes: int
    clean_logits: torch.Tensor | None
    confidence: list[float] | None


def fill_block(state: BLTState, kv_block: torch.Tensor, size: int, rule: UnmaskRule, pick: Pick,
               clean_kv: torch.Tensor | None = None, ignore_eos: bool = False,
               first: Pick | None = None, with_confidence: bool = False) -> FilledBlock:
    """Algorithm 1's inner loop: start from ``size`` MASK slots after the state's bytes and unmask
    them with ``rule`` until none is left, drawing values with ``pick``.

    first: None (Algorithm 1 as written), or a pick for slot 0 from the first pass's last clean row
    (BLT-DV's fused schedule; BLT-D ``first_slot="ar"``): that row, the last committed or pending
    byte's, is the next-byte prediction for slot 0's position, so slot 0 takes its value in the
    same pass and the rule unmasks the other slots (later passes condition on it). A first pass
    without clean rows leaves slot 0 to the rule. with_confidence: also return each slot's
    confidence (one softmax per pass, kept off the loop otherwise).
    Returns a :class:`FilledBlock`. Adds the passes to ``counters.diffusion_steps``. See
    :meth:`BLTState.decode_block` for kv_block / clean_kv.
    """
    slots = [MASK_ID] * size
    conf = [0.0] * size if with_confidence else None
    masked = list(range(size))
    passes = 0
    clean_last = None

    def top_p(rows: torch.Tensor) -> list[float]:  # max probability of each row's distribution
        return suppress(rows, ignore_eos).softmax(-1).max(-1).values.tolist()

    while masked:
        if first is not None and passes == 0 and state.n_dec < len(state):
            clean, logits = state.decode_block(slots, kv_block, clean_kv, with_clean=True)
            clean_last = clean[0, -1:]  # [1, 260]: the last clean row predicts slot 0
            slots[0] = first(clean_last)[0]
            if conf is not None:
                conf[0] = top_p(clean_last)[0]
            masked = masked[1:]
            logits = logits[0]
        else:
            logits = state.decode_block(slots, kv_block, clean_kv)[0]  # [size, 260]
        passes += 1
        if not masked:
            break
        last = rule.max_steps is not None and passes >= rule.max_steps
        chosen = list(range(len(masked))) if last else rule.choose(logits[masked], ignore_eos)
        where = [masked[i] for i in chosen]
        for i, v in zip(where, pick(logits[where])):
            slots[i] = v
        if conf is not None:
            for i, c in zip(where, top_p(logits[where])):
                conf[i] = c
        masked = [masked[i] for i in sorted(set(range(len(masked))) - set(chosen))]
    state.counters.diffusion_steps += passes
    return FilledBlock(slots, passes, clean_last, conf)


def generate_blt_d(model: BLT, ids: list[int], ctx: Context, *, block_size: int | None = None,
                   unmask: Unmask = "confidence", alpha: float = 0.7, gamma: float = 1.0,
                   max_steps_per_block: int | None = None, first_slot: FirstSlot = "diffusion") -> None:
    """BLT-D (Algorithm 1 with do_verify = False). ids: BOS + prompt byte ids.

    block_size: B (None: the model's ``cfg.diffusion_block_size``); unmask: "confidence" (α) |
    "entropy" (γ, nats) | "one-step"; max_steps_per_block: S (None: B, i.e. no cap);
    first_slot: "diffusion" (Algorithm 1: every slot is unmasked by the rule) | "ar" (beyond the
    paper: slot 0 takes the value drawn from the block's first pass's last clean row — the bytes
    committed by the previous block, on their own latents: BLT's next-byte distribution given the
    prefix — and the rule unmasks the others; no extra decoder call). Per block: one entropy +
    encoder + global call, then one decoder call per unmasking pass. Counts blocks in
    ``counters.iterations`` and passes in ``counters.diffusion_steps``.
    Raises ValueError for a model without diffusion training or invalid options.
    """
    size = check_block_size(model, "blt-d", block_size)
    rule = UnmaskRule(unmask, alpha, gamma, max_steps_per_block)
    if first_slot not in CHOICES["FirstSlot"]:
        raise ValueError(f"first_slot must be one of {CHOICES['FirstSlot']}, got {first_slot!r}")

    def pick(logits: torch.Tensor) -> list[int]:
        return ctx.sampler.sample(logits).tolist()

    state = BLTState(model, ctx.counters, capacity=len(ids) + ctx.out.remaining + size)  # + a block's slots
    new = list(ids)
    while True:
        state.append(new)
        state.patch()
        state.encode()
        kv = state.close_patches(provisional=True)  # o_M: [1, k, d_local]
        assert kv is not None
        new = fill_block(state, kv, min(size, ctx.out.remaining), rule, pick,
                         ignore_eos=ctx.sampler.params.ignore_eos, first=pick if first_slot == "ar" else None).ids
        ctx.counters.iterations += 1
        if ctx.out.emit(new):
            return
