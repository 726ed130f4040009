"""BLT-S: self-speculative BLT (Fast BLT §5.1 / reference §7.1, verification = Algorithm 2, §6).

The local decoder drafts up to k bytes autoregressively on one fixed latent, ignoring patch
boundaries (each drafted byte needs a local-encoder step for the next decoder input, but no
entropy-model or global call). One causal pass then verifies the draft with BLT's own rules:
entropy model over the new bytes → patch starts → one pooling + global call for the patches closed
inside the draft → decoder over the draft rows with their correct latents. Drafted bytes are
accepted up to the first mismatch, where the verifier's byte is put instead; if all match, the
verifier's next byte is added for free. Rejected bytes are rolled back in every cache.

Loop invariant: the state holds the committed bytes, fully processed; the pending byte ``c`` was
drawn from the verifier's distribution (final, already emitted) and is the first row of the next
draft. Per iteration: k drafting decoder calls + 1 verifying call, and between 1 and k + 1 bytes.

Schedules (latent the draft conditions on):
- "paper": an encoder + global call on the new prefix (prefix + c), with the open patch pooled as if
  closed, gives the newest latent (as BLT-D does, §4.2); then the draft; then the verifying pass.
  Two E+G calls per iteration, which is how the paper counts (§7.1, §11.7).
- "fused": the draft conditions on the last latent the previous verifying pass already computed
  (the last closed patch): one E+G call per iteration at most.

Sampling (temperature > 0) keeps the target distribution exactly: at each drafted position the
verifier's byte y is drawn with the seeded generator and the drafted byte is accepted only when it
equals y (the match rule), so every emitted byte is a target sample given the emitted prefix.
Drafts are greedy (the argmax maximises P(accept) = p_target(d)). Greedy BLT-S == greedy BLT.
"""
from __future__ import annotations

from ..config import EOS_ID
from ..model.blt import BLT
from .sampling import Sampler
from .state import BLTState
from .stopping import Context

SCHEDULES = ("paper", "fused")


def check_draft_options(draft_length: int, schedule: str) -> None:
    """Raise ValueError unless draft_length is an integer ≥ 1 and schedule is "paper" or "fused"."""
    if isinstance(draft_length, bool) or not isinstance(draft_length, int) or draft_length < 1:
        raise ValueError(f"draft_length must be an integer >= 1, got {draft_length!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def draft(state: BLTState, kv, n_draft: int, sampler: Sampler) -> list[int]:
    """Greedy draft of up to n_draft bytes after the state's last byte, every decoder row reading
    the latent vectors kv [1, k, d_local]. Appends the drafted bytes to the state (the decoder rows
    stay cached: crop them before verifying). Stops early after a drafted EOS."""
    out: list[int] = []
    for _ in range(n_draft):
        state.encode()
        d = sampler.draft_pick(state.decode(kv=kv)[:, -1])
        out.append(d)
        state.append([d])
        if d == EOS_ID:
            break
    return out


def verify(state: BLTState, n: int, drafted: list[int], ctx: Context) -> tuple[list[int], int]:
    """Algorithm 2 on the state's bytes n .. end (the pending byte, then ``drafted``).

    One causal pass over rows n .. end; then y_i is drawn from row n + i and drafted[i] is accepted
    iff it equals y_i. Returns (accepted drafted bytes, the verifier's next byte) and rolls the
    state back to the pending byte plus the accepted bytes.
    """
    state.crop_decoder(n)
    # rows n .. end; decoding may start earlier when rows before n were never decoded (e.g. a BLT-DV
    # first iteration without a draft), so keep the last len(drafted) + 1 rows
    logits = state.advance()[:, -(len(drafted) + 1):]  # [1, len(drafted) + 1, 260]
    accepted: list[int] = []
    for i in range(len(drafted) + 1):
        y = ctx.sampler.pick(logits[:, i])
        if i == len(drafted) or y != drafted[i]:
            break
        accepted.append(y)
    state.rollback(n + 1 + len(accepted))
    return accepted, y


def generate_blt_s(model: BLT, ids: list[int], ctx: Context, *, draft_length: int = 8, schedule: str = "fused") -> None:
    """BLT-S. ids: BOS + prompt byte ids; draft_length: k (paper: 4, 8, 16); schedule: "paper" | "fused"."""
    check_draft_options(draft_length, schedule)
    state = BLTState(model, ctx.counters)
    c = ctx.sampler.pick(state.extend(ids)[:, -1])
    iterations = 0
    done = ctx.out.emit([c])
    while not done:
        n = len(state)
        n_draft = min(draft_length, ctx.out.remaining - 1)  # never draft past max_new_bytes
        state.append([c])
        if schedule == "paper":
            state.patch()
            state.encode()
            kv = state.close_patches(provisional=True)
        else:
            kv = state.last_latent_vectors()
        drafted = draft(state, kv, n_draft, ctx.sampler)
        accepted, c = verify(state, n, drafted, ctx)
        iterations += 1
        ctx.counters.iterations += 1
        ctx.counters.drafted_bytes += len(drafted)
        ctx.counters.accepted_bytes += len(accepted)
        done = ctx.out.emit(accepted + [c])
    ctx.global_nfe_paper = 2 * iterations
