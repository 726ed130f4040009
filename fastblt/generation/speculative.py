"""Speculative generation with BLT's own verifier: one draft-and-verify loop for BLT-S and BLT-DV
(Fast BLT, arXiv 2605.08044: Algorithm 2 ``Verify``; §5.1 BLT-S; §5.2 BLT-DV).

A *proposer* drafts up to a budget of bytes after the committed text, every draft row reading one
fixed latent (BLT-S: the local decoder autoregressively, :mod:`.blt_s`; BLT-DV: a BLT-D block,
:mod:`.blt_dv`). :func:`verify` (Algorithm 2) then runs BLT once, causally, over the pending byte and
the draft — entropy model over the new bytes → patch starts → one pooling + global call for the
patches closed inside the draft → decoder over the draft rows with their correct latents — keeps the
drafted bytes up to the first mismatch with the verifier's byte, puts the verifier's byte there
(or, when every drafted byte matched, adds it as a free next byte), and rolls every cache back past
the rejected bytes.

Loop invariant of :func:`speculate`: the state holds the committed bytes, processed through every
component, and decoder rows only for those bytes; ``pending`` bytes (the prompt, or the verifier's
last byte, already emitted) are final but not yet in the state. Per iteration:

1. append ``pending``; the draft budget is ``min(draft_length, remaining − 1)`` (the verifier adds
   one byte, and nothing is drafted past ``max_new_bytes``);
2. the drafting latent (``schedule``):
   - "paper": an entropy + encoder + global call over the new bytes, the open patch pooled as if
     closed (its latent o_M, as BLT-D blocks read it, §3.1.1) — 2 E+G calls per iteration with the
     verification, which is how the paper counts (Tables 3–10);
   - "fused": the last latent the previous verification already computed (the last closed patch),
     so at most 1 E+G call per iteration; the first iteration, with no latent yet, is as "paper";
3. ``propose`` (see :class:`Propose`); a drafted EOS ends the draft;
4. :func:`verify`, then ``counters.record_iteration`` and ``ctx.out.emit(accepted + [y])``.

Sampling keeps the target distribution exactly (temperature > 0): the verifier draws y_i at each
drafted position with the seeded generator and a drafted byte is accepted only when it equals y_i
(the match rule), so every emitted byte is a target sample given the emitted prefix. Drafts are
greedy (the argmax maximises P(accept) = p_target(d)). Greedy speculation == greedy BLT.
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..config import EOS_ID
from ..model.blt import BLT
from .methods import CHOICES, Schedule
from .sampling import Sampler
from .state import BLTState
from .stopping import Context

SCHEDULES = CHOICES["Schedule"]


class Propose(Protocol):
    """A drafter: ``propose(state, kv, budget, patched) -> drafted ids``.

    state: the committed bytes plus the pending ones (the last pending byte's row predicts the first
    drafted byte); kv [1, k, d_local]: the latent vectors every draft row reads; budget ≥ 1: the most
    bytes to draft; patched: whether the pending bytes are patched and their own latents computed
    (after the provisional E+G call; not after "fused"). The proposer appends its drafted bytes to the
    state and returns them; it may leave decoder rows from the last pending byte on in the cache
    (:func:`verify` redoes them), but must decode any earlier row with its own latent.
    """

    def __call__(self, state: BLTState, kv: torch.Tensor, budget: int, patched: bool) -> list[int]: ...


def check_schedule(draft_length: int, schedule: str) -> None:
    """Raise ValueError unless draft_length is an integer ≥ 1 and schedule is "paper" or "fused"."""
    if isinstance(draft_length, bool) or not isinstance(draft_length, int) or draft_length < 1:
        raise ValueError(f"draft_length must be an integer >= 1, got {draft_length!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def verify(state: BLTState, n: int, drafted: list[int], sampler: Sampler) -> tuple[list[int], int]:
    """Algorithm 2 (Fast BLT) on the state's bytes n .. end: the last pending byte, then ``drafted``.

    One causal BLT pass over rows n .. end (rows before n are decoded in the same call when they
    were not yet); y_i is drawn from row n + i and drafted[i] is accepted iff it equals y_i.
    Returns (the accepted drafted bytes, the verifier's next byte y) and rolls the state back to the
    bytes through n plus the accepted ones.
    """
    state.crop_decoder(n)
    logits = state.advance()[:, -(len(drafted) + 1):]  # rows n .. end: [1, len(drafted) + 1, 260]
    accepted: list[int] = []
    for i in range(len(drafted) + 1):
        y = sampler.pick(logits[:, i])
        if i == len(drafted) or y != drafted[i]:
            break
        accepted.append(y)
    state.rollback(n + 1 + len(accepted))
    return accepted, y


def speculate(model: BLT, ids: list[int], ctx: Context, propose: Propose, *, draft_length: int,
              schedule: Schedule = "fused", prefill: bool = True) -> None:
    """The draft-and-verify loop (module docstring). ids: BOS + prompt byte ids.

    draft_length: the most bytes a proposal may hold (BLT-S: k; BLT-DV: B); schedule: "paper" |
    "fused"; prefill: True — the first byte comes from one plain cached BLT pass over the prompt and
    drafting starts after it (BLT-S); False — the prompt is the first pending text and the first
    proposal decodes its rows in the same call (BLT-DV's block pass does).
    Raises ValueError for an invalid draft_length or schedule.
    """
    check_schedule(draft_length, schedule)
    out, counters = ctx.out, ctx.counters
    counters.speculative = True
    state = BLTState(model, counters, capacity=len(ids) + out.remaining + draft_length)  # + the last draft
    pending = list(ids)
    if prefill:
        pending = [ctx.sampler.pick(state.extend(pending)[:, -1])]
        if out.emit(pending):
            return
    while True:
        n = len(state) + len(pending) - 1  # the row of the last pending byte predicts drafted[0]
        state.append(pending)
        budget = min(draft_length, out.remaining - 1)
        drafted: list[int] = []
        if budget > 0:
            state.encode()
            patched = schedule == "paper" or state.n_glob == 0
            if patched:
                state.patch()
                kv = state.close_patches(provisional=True)
            else:
                kv = state.last_latent_vectors()
            drafted = propose(state, kv, budget, patched)
            if EOS_ID in drafted[:-1]:  # nothing after a drafted EOS can be accepted
                drafted = drafted[:drafted.index(EOS_ID) + 1]
                state.rollback(n + 1 + len(drafted))
        accepted, y = verify(state, n, drafted, ctx.sampler)
        counters.record_iteration(len(drafted), len(accepted))
        if out.emit(accepted + [y]):
            return
        pending = [y]
