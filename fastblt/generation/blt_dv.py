"""BLT-DV: block diffusion drafting + causal verification with the same weights
(Fast BLT §5.2 / reference §7.2; Algorithm 1 with do_verify = True, verification = Algorithm 2).

Each iteration drafts one block of up to B bytes with BLT-D (:func:`.blt_d.fill_block`, default
one-step: a single decoder pass fills the block) and verifies it with one causal BLT pass
(:func:`.blt_s.verify`): drafted bytes are accepted up to the first mismatch with the verifier's
byte, which is put instead; if all match, the verifier's next byte is added for free. So greedy
BLT-DV output == greedy cached BLT on the same (BLT-D) model, byte for byte.

Loop invariant (as BLT-S): the state holds the committed bytes, processed; ``pending`` bytes
(first the prompt, then the verifier's last byte, already emitted) are appended and become the
last clean rows before the block, whose slots sit at positions N .. N + B − 1.

Schedules (latent the block slots read):
- "paper": an entropy + encoder + global call on the prefix (pending included), the open patch
  pooled as if closed, gives o_M (as BLT-D, §4.2); then the diffusion passes; then the verifying
  pass. Two E+G calls per iteration, as the paper counts (§7.2, §11.7).
- "fused": the block reads the last latent the previous verifying pass computed (last closed
  patch), so one E+G call per iteration (the first iteration, with no latent yet, is as "paper").
``global_nfe_paper`` is 2 per iteration either way.

Drafts are greedy at any temperature (the argmax maximises the match probability); the verifier
draws with ``ctx.sampler``, so each emitted byte is a sample of the target given the emitted prefix.
"""
from __future__ import annotations

from ..config import EOS_ID
from ..model.blt import BLT
from .blt_d import UnmaskRule, check_block_size, fill_block
from .blt_s import SCHEDULES, verify
from .state import BLTState
from .stopping import Context


def generate_blt_dv(model: BLT, ids: list[int], ctx: Context, *, block_size: int | None = None,
                    unmask: str = "one-step", alpha: float = 0.3, gamma: float = 1.5,
                    max_steps_per_block: int | None = None, schedule: str = "fused") -> None:
    """BLT-DV. ids: BOS + prompt byte ids.

    block_size: B (None: ``cfg.diffusion_block_size``); unmask: "one-step" (default) |
    "confidence" (α; default 0.3, the paper's DV setting) | "entropy" (γ nats; default 1.5);
    max_steps_per_block: S (None: no cap); schedule: "paper" | "fused".
    Per iteration: 1 (fused) or 2 (paper) E+G calls, s diffusion decoder passes + 1 verifying pass.
    Raises ValueError for a model without diffusion training or invalid options.
    """
    size = check_block_size(model, "blt-dv", block_size)
    rule = UnmaskRule(unmask, alpha, gamma, max_steps_per_block)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    c = ctx.counters
    state = BLTState(model, c)
    pending = list(ids)
    iterations = 0
    while True:
        n = len(state) + len(pending) - 1  # the row of the last pending byte verifies drafted[0]
        state.append(pending)
        n_draft = min(size, ctx.out.remaining - 1)  # the verifier adds one byte
        drafted: list[int] = []
        if n_draft > 0:
            state.encode()
            if schedule == "paper" or iterations == 0:
                state.patch()
                kv, clean_kv = state.close_patches(provisional=True), None
            else:
                kv = clean_kv = state.last_latent_vectors()
            drafted, _ = fill_block(state, kv, n_draft, rule, lambda x: ctx.sampler.suppress(x).argmax(-1).tolist(),
                                    clean_kv, ignore_eos=ctx.sampler.params.ignore_eos)
            if EOS_ID in drafted:
                drafted = drafted[:drafted.index(EOS_ID) + 1]
            state.append(drafted)
        accepted, y = verify(state, n, drafted, ctx)
        iterations += 1
        c.iterations += 1
        c.drafted_bytes += len(drafted)
        c.accepted_bytes += len(accepted)
        if ctx.out.emit(accepted + [y]):
            break
        pending = [y]
    ctx.global_nfe_paper = 2 * iterations
