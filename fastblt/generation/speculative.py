"""Speculative generation with BLT's own verifier: one draft-and-verify loop for BLT-S and BLT-DV
(Fast BLT, arXiv 2605.08044: Algorithm 2 ``Verify``; §5.1 BLT-S; §5.2 BLT-DV).

A *proposer* drafts up to a budget of bytes after the committed text, every draft row reading one
fixed latent (BLT-S: the local decoder autoregressively, :mod:`.blt_s`; BLT-DV: a BLT-D block,
:mod:`.blt_dv`). Verification (Algorithm 2) then runs BLT causally over the pending byte and the
draft — entropy model over the new bytes → patch starts → pooling + global for the patches closed
inside the draft → decoder over the draft rows with their correct latents — keeps the drafted bytes
up to the first mismatch with the verifier's byte, puts the verifier's byte there (or, when every
drafted byte matched, adds it as a free next byte), and rolls every cache back past the rejected
bytes. Two ways to run it, one per schedule:

- :func:`verify` ("paper"): Algorithm 2 as written, one pass over every row;
- :func:`verify_lazy` ("fused"): the same bytes with less work. Rows whose latent is already
  computed (all rows before the first patch boundary inside the draft) are decoded first, and the
  global transformer runs only if every one of them matched; a BLT-S draft row that read the very
  latent the verifier's row reads *is* the verifier's row (same inputs, same cached keys), so its
  logits are reused and no decoder pass runs for it. 0, 1 or 2 decoder passes per iteration.

Loop invariant of :func:`speculate`: the state holds the committed bytes, processed through every
component (in "fused", latents of committed patches may still be missing: they are computed when a
draft needs them), and decoder rows only for those bytes; ``pending`` bytes (the prompt, or the
verifier's last byte, already emitted) are final but not yet in the state. Per iteration:

1. append ``pending``; the draft budget is ``min(draft_length, remaining − 1)`` (the verifier adds
   one byte, and nothing is drafted past ``max_new_bytes``);
2. the drafting latent (``schedule``):
   - "paper": an entropy + encoder + global call over the new bytes, the open patch pooled as if
     closed (its latent o_M, as BLT-D blocks read it, §3.1.1) — 2 E+G calls per iteration with the
     verification, which is how the paper counts (Tables 3–10);
   - "fused": the latent of the last closed patch (computed now if verification left it lazy), so
     E+G calls run only when a latent is missing; the first iteration, with no latent yet, is as "paper";
3. ``propose`` (see :class:`Propose`); a drafted EOS ends the draft;
4. verification, then ``counters.record_iteration`` and ``ctx.out.emit(accepted + [y])``.

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
    """A drafter: ``propose(state, kv, budget, patched) -> (drafted ids, their rows' logits or None)``.

    state: the committed bytes plus the pending ones (the last pending byte's row predicts the first
    drafted byte); kv [1, k, d_local]: the latent vectors every draft row reads; budget ≥ 1: the most
    bytes to draft; patched: whether the pending bytes are patched and their own latents computed
    (after the provisional E+G call; not after "fused"). The proposer appends its drafted bytes to the
    state and returns them; it may leave decoder rows from the last pending byte on in the cache
    (verification redoes them), but must decode any earlier row with its own latent. The logits
    ([m, 260] float32, m ≤ len(drafted), or None) are those of decoder rows n .. n + m − 1 when the
    proposer decoded exactly these rows on ``kv`` and left them in the cache (BLT-S: every draft row;
    BLT-DV: the pending byte's row n of its block pass): rows that read the verifier's latent are
    then reused by :func:`verify_lazy`.
    """

    def __call__(self, state: BLTState, kv: torch.Tensor, budget: int,
                 patched: bool) -> tuple[list[int], torch.Tensor | None]: ...


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
    state.counters.verify_passes += 1
    return accepted, y


def verify_lazy(state: BLTState, n: int, drafted: list[int], sampler: Sampler,
                draft_latent: int | None = None, draft_logits: torch.Tensor | None = None) -> tuple[list[int], int]:
    """:func:`verify`'s result (same accepted bytes, same y, same sampler draws), computing rows only
    as far as they are needed (the "fused" schedule; see the module docstring).

    draft_latent: index of the latent every draft row read (None: a provisional latent, never the
    verifier's); draft_logits [m, 260]: logits of rows n .. n + m − 1 (:class:`Propose`).
    Phase 1: rows n .. r − 1 whose latents are computed (r: the first row reading a patch closed
    inside the draft) — reused draft rows, then one decoder pass over the others. Phase 2, only if
    every phase-1 row matched: one global call for the new patches and one decoder pass over rows
    r .. end. Each decoder pass adds one to ``counters.verify_passes``.
    """
    end = n + len(drafted) + 1  # rows n .. end − 1
    state.patch()  # one entropy-model call: every row's latent is known from here
    r = n
    while r < end and state.row_patch(r) < state.n_glob:
        r += 1
    reuse = 0
    if draft_logits is not None and draft_latent is not None:
        while reuse < min(len(drafted), len(draft_logits), r - n) and state.row_patch(n + reuse) == draft_latent:
            reuse += 1

    def rows():  # the verifier's logits of rows n, n + 1, ... [1, 260], each computed when first asked for
        for i in range(reuse):
            yield draft_logits[i:i + 1]
        for lo, hi in ((n + reuse, r), (r, end)):
            if hi <= lo:
                continue
            state.encode(hi if lo < r else None)  # byte states of the rows' inputs (all of them before pooling)
            if lo == r:
                state.close_patches()
            state.crop_decoder(lo)
            logits = state.decode(hi)[0, lo - hi:]  # the call also decodes earlier rows not yet decoded (a prompt)
            state.counters.verify_passes += 1
            for i in range(hi - lo):
                yield logits[i:i + 1]

    accepted: list[int] = []
    for i, row in enumerate(rows()):
        y = sampler.pick(row)
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
        draft_logits, draft_latent = None, None
        if budget > 0:
            state.encode()
            patched = schedule == "paper" or state.n_glob == 0
            if patched:
                state.patch()
                kv = state.close_patches(provisional=True)
            else:
                if state.n_glob < state.n_closed:  # a committed patch whose latent verification left lazy
                    state.close_patches()
                kv, draft_latent = state.last_latent_vectors(), state.n_glob - 1
            drafted, draft_logits = propose(state, kv, budget, patched)
            if EOS_ID in drafted[:-1]:  # nothing after a drafted EOS can be accepted
                drafted = drafted[:drafted.index(EOS_ID) + 1]
                state.rollback(n + 1 + len(drafted))
        if schedule == "paper":
            accepted, y = verify(state, n, drafted, ctx.sampler)
        else:
            accepted, y = verify_lazy(state, n, drafted, ctx.sampler, draft_latent, draft_logits)
        counters.record_iteration(len(drafted), len(accepted))
        if out.emit(accepted + [y]):
            return
        pending = [y]
