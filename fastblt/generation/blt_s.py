"""BLT-S: self-speculative BLT (Fast BLT, arXiv 2605.08044 §5.1; verification = Algorithm 2).

The proposer of :func:`~fastblt.generation.speculative.speculate`: the local decoder drafts up to k
bytes autoregressively on one fixed latent, ignoring patch boundaries. Each drafted byte needs a
local-encoder step for the next decoder input, but no entropy-model or global call. Verification,
schedules, sampling and accounting are the shared loop's. Per iteration: k drafting decoder calls +
1 verifying call, and between 1 and k + 1 bytes. Greedy BLT-S == greedy BLT, on any BLT.
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


def draft(state: BLTState, kv: torch.Tensor, n_draft: int, sampler: Sampler) -> list[int]:
    """Greedy draft of up to n_draft bytes after the state's last byte, every decoder row reading
    the latent vectors kv [1, k, d_local]. Appends the drafted bytes to the state (their decoder rows
    stay cached; :func:`~fastblt.generation.speculative.verify` redoes them). Stops after an EOS."""
    out: list[int] = []
    for _ in range(n_draft):
        state.encode()
        d = sampler.draft_pick(state.decode(kv=kv)[:, -1])
        out.append(d)
        state.append([d])
        if d == EOS_ID:
            break
    return out


def generate_blt_s(model: BLT, ids: list[int], ctx: Context, *, draft_length: int = 8,
                   schedule: Schedule = "fused") -> None:
    """BLT-S. ids: BOS + prompt byte ids; draft_length: k (paper: 4, 8, 16); schedule: "paper" | "fused".

    The first byte comes from a plain cached pass over the prompt; then draft-and-verify iterations.
    Raises ValueError for an invalid draft_length or schedule.
    """
    def propose(state: BLTState, kv: torch.Tensor, budget: int, patched: bool) -> list[int]:
        return draft(state, kv, budget, ctx.sampler)

    speculate(model, ids, ctx, propose, draft_length=draft_length, schedule=schedule, prefill=True)
