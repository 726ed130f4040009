"""The two attention masks of BLT's local decoder that depend on patches and blocks.

Masks are boolean, True = may attend, shaped [B, 1, Q, K] (broadcast over heads) as
:func:`fastblt.model.layers.attention` takes them. Plain causal (sliding-window) self-attention is
:func:`fastblt.model.layers.causal_window_mask`.

- :func:`latent_cross_mask`: which latent each decoder row cross-attends (BLT, arXiv 2412.09871
  §3.3.1; Fast BLT, arXiv 2605.08044 §3.1.1 Fig. 3 and §3.2 Fig. 5).
- :func:`block_self_mask`: decoder self-attention over clean rows and BLT-D block slots (Fast BLT
  §3.1.1 Fig. 3 at inference, §3.2 Fig. 5 in training).
"""
from __future__ import annotations

import torch


def latent_cross_mask(row_latent: torch.Tensor, n_latents: int, k: int) -> torch.Tensor:
    """Decoder cross-attention mask: row r sees the k vectors of latent ``row_latent[r]`` only.

    The keys are ``n_latents`` latents, each projected to k consecutive vectors (BLT §3.3.1:
    ``LocalDecoder.latent_vectors``), so key j belongs to latent j // k. Its parts:

    - **clean causal rows** (bytes): the BLT latent rule — the row predicting a byte of patch p reads
      o_{p−1}, the latent of the last patch closed before that byte (BLT §3.3.1;
      :func:`fastblt.patching.patches.decoder_patch_ids` gives these indices);
    - **block slots** (BLT-D): every slot of a block reads the latent of the prefix it continues —
      o_{q−1} for the block at patch q in training (Fast BLT §3.2, Fig. 5), the last latent o_M at
      inference (§3.1.1, Fig. 3);
    - a row with index −1 (or ≥ n_latents) sees no latent (padding; its output is never read).

    row_latent: LongTensor [B, T]; returns BoolTensor [B, 1, T, n_latents · k].
    """
    key_latent = torch.arange(n_latents, device=row_latent.device).repeat_interleave(k)
    return (row_latent[:, :, None] == key_latent[None, None, :])[:, None]


def block_self_mask(q_pos: torch.Tensor, q_block: torch.Tensor, q_start: torch.Tensor,
                    k_pos: torch.Tensor, k_block: torch.Tensor, window: int | None) -> torch.Tensor:
    """BLT-D decoder self-attention over clean rows and block slots (Fast BLT §3.1.1 Fig. 3, §3.2 Fig. 5).

    Every query and key is either a clean row (block id −1) or a slot of block b ≥ 0 (block id b);
    positions are absolute (slots keep the positions of the bytes they stand for). Its parts:

    - **clean causal rows**: a clean row sees clean keys at positions ≤ its own (within
      ``window``) and never a slot, so the clean rows compute exactly BLT;
    - **bidirectional slots**: a slot sees every slot of its own block, in both directions, and no
      slot of another block;
    - **slot → clean prefix**: a slot of a block starting at s sees clean keys at positions < s
      (within ``window`` of the slot's own position) — never the clean rows at ≥ s, which hold the
      bytes the block reconstructs (the label leak of §3.2). At inference s = N, the prefix length,
      so a slot sees the whole prefix (Fig. 3);
    - a row with block id < −1 (an invalid, padded block) sees nothing.

    q_pos, q_block, q_start: LongTensor [B, Q] (q_start: start s of the query's block; ignored for
    clean rows); k_pos, k_block: LongTensor [B, K]; window: sliding window in positions (None =
    unbounded). Returns BoolTensor [B, 1, Q, K].
    """
    diff = q_pos[:, :, None] - k_pos[:, None, :]
    q_clean, q_slot = (q_block == -1)[:, :, None], (q_block >= 0)[:, :, None]
    k_clean = (k_block == -1)[:, None, :]
    clean_causal = q_clean & k_clean & (diff >= 0)
    slot_to_prefix = q_slot & k_clean & (k_pos[:, None, :] < q_start[:, :, None])
    near = (diff < window) if window is not None else True
    same_block = q_slot & (q_block[:, :, None] == k_block[:, None, :])
    return (((clean_causal | slot_to_prefix) & near) | same_block)[:, None]
