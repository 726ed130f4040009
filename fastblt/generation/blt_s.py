"""BLT-S: self-speculative BLT (Fast BLT, arXiv 2605.08044 §5.1; verification = Algorithm 2).

The proposer of :func:`~fastblt.generation.speculative.speculate`: the local decoder drafts up to k
bytes autoregressively on one fixed latent, ignoring patch boundaries. Each drafted byte needs a
local-encoder step for the next decoder input, but no entropy-model or global call. Verification,
schedules, sampling and accounting are the shared loop's. Per iteration: k drafting decoder calls +
1 verifying call ("paper"; "fused": 0 to 2, the draft rows before the first patch boundary are the
verifier's rows), and between 1 and k + 1 bytes. Greedy BLT-S == greedy BLT, on any BLT.
"""
from __future__ import annotations

import torch

from ..config import EOS_ID
from ..model.blt import BLT
from .methods import Schedule
from .sampling import Sampler
from .speculative import speculate
from .state import BLTState
from .stopping import Context


def draft(state: BLTState, kv: torch.Tensor, n_draft: int, sampler: Sampler) -> tuple[list[int], torch.Tensor]:
    """Greedy draft of up to n_draft bytes after the state's last byte, every decoder row reading
    the latent vectors kv [1, k, d_local]. Appends the drafted bytes to the state; their decoder rows
    stay cached (verification reuses those that read the verifier's latent and redoes the others).
    Returns (drafted ids, the draft rows' logits [len, 260] float32). Stops after an EOS."""
    out: list[int] = []
    rows: list[torch.Tensor] = []
    for _ in range(n_draft):
        state.encode()
        rows.append(state.decode(kv=kv)[0, -1:])
        d = sampler.draft_pick(rows[-1])
        out.append(d)
        state.append([d])
        if d == EOS_ID:
            break
    return out, torch.cat(rows)


def generate_blt_s(model: BLT, ids: list[int], ctx: Context, *, draft_length: int = 8,
                   schedule: Schedule = "fused") -> None:
    """BLT-S. ids: BOS + prompt byte ids; draft_length: k (paper: 4, 8, 16); schedule: "paper" | "fused".

    The first byte comes from a plain cached pass over the prompt; then draft-and-verify iterations.
    Raises ValueError for an invalid draft_length or schedule.
    """
    def propose(state: BLTState, kv: torch.Tensor, budget: int, patched: bool) -> tuple[list[int], torch.Tensor]:
        return draft(state, kv, budget, ctx.sampler)

    speculate(model, ids, ctx, propose, draft_length=draft_length, schedule=schedule, prefill=True)
