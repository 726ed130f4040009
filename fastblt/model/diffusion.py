"""BLT-D layouts: block construction and attention masks (Fast BLT §3.1.1, §3.2, Fig. 3–5).

Training layout. A row holds N input bytes x_0..x_{N−1} and one more byte x_N (the last target).
Every patch q ≥ 1 whose start s_q ≤ N gets a block of B slots at positions s_q .. s_q + B − 1 that
reconstructs bytes x_{s_q..s_q+B−1} (BLOCK_PAD past x_N). The decoder runs once on
[clean rows ; slot rows]:
- clean rows: causal (sliding window), BLT latent rule — exactly BLT, so the clean loss is BLT's;
- slot rows of block q: bidirectional inside their block, and clean rows at positions < s_q only
  (never ≥ s_q: those hold the very bytes being reconstructed — the label leak); no block-to-block
  attention; the sliding window is measured from the slot's own position;
- slot rows of block q cross-attend latent o_{q−1}, the patch that ends at s_q − 1;
- slots keep their absolute positions for RoPE (they repeat clean positions).

Inference layout. After a prefix of N bytes, one block of B slots at positions N .. N + B − 1
attends every prefix row and the whole block, and the latent of the last prefix patch (the prefix
end treated as a closed patch). When the prefix ends exactly at a patch boundary this is the
training layout of that block — :func:`block_logits_inference` and :func:`forward_training_layout`
must then agree (tested).

Aligned layout (our extension, see the README's faithfulness notes). At inference a block starts
where the previous one ended, mostly *inside* a patch, and reads a latent that the paper's training
layout never produces. :func:`aligned_blocks` samples block starts m anywhere in the row and gives
each block the latent its schedule reads there:
- "provisional" (BLT-D and the paper schedule of BLT-DV, Fast BLT §3.1.1 and Algorithm 1): the open patch
  [s_open, m) pooled as if closed, on top of the closed patches before it. When m is itself a patch
  start, that is the closed patch ending at m − 1, as in the paper's layout. Otherwise an extra
  global-transformer row computes it (:func:`provisional_latents`: it attends the closed patches
  before it and itself, at the open patch's position).
- "fused" (fused BLT-DV): the latent of the last patch closed before byte m − 1's patch, i.e. the
  one the previous verifying pass computed.
Slot rows still attend clean rows < m only, so the label-leak argument is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import BLOCK_PAD_ID, MASK_ID
from ..patching import patches as P
from .masks import block_self_mask, latent_cross_mask

LATENT_KINDS = ("provisional", "fused")


@dataclass
class BlockLayout:
    """Blocks of a batch in the training layout; Q = max blocks per row, B = block size.

    start: LongTensor [b, Q] block start positions (0 where invalid); latent: LongTensor [b, Q]
    index of the closed-patch latent a block reads; valid: BoolTensor [b, Q]; size: B.
    Aligned layouts also set provisional: BoolTensor [b, Q] (the block reads the provisional latent
    of the open patch [open_start, start) at global position ``latent`` instead), open_start:
    LongTensor [b, Q], and fused: BoolTensor [b, Q] (the block's kind, for reports).
    """

    start: torch.Tensor
    latent: torch.Tensor
    valid: torch.Tensor
    size: int
    provisional: torch.Tensor | None = None
    open_start: torch.Tensor | None = None
    fused: torch.Tensor | None = None

    @property
    def slot_positions(self) -> torch.Tensor:
        """Absolute positions of all slots, LongTensor [b, Q·B]."""
        off = torch.arange(self.size, device=self.start.device)
        return (self.start[:, :, None] + off).flatten(1)

    @property
    def slot_block(self) -> torch.Tensor:
        """Block index of every slot, LongTensor [b, Q·B]."""
        q = torch.arange(self.start.shape[1], device=self.start.device)
        return q.repeat_interleave(self.size).expand(self.start.shape[0], -1)

    @property
    def slot_valid(self) -> torch.Tensor:
        return self.valid.repeat_interleave(self.size, dim=1)


def training_blocks(starts: torch.Tensor, block_size: int) -> BlockLayout:
    """One block per patch q ≥ 1 with start s_q ≤ N (starts: BoolTensor [b, N + 1])."""
    b = starts.shape[0]
    rows = [torch.nonzero(starts[r, 1:], as_tuple=False).flatten() + 1 for r in range(b)]
    q_max = max(1, max(len(x) for x in rows))
    start = torch.zeros(b, q_max, dtype=torch.long, device=starts.device)
    valid = torch.zeros(b, q_max, dtype=torch.bool, device=starts.device)
    for r, s in enumerate(rows):
        start[r, : len(s)] = s
        valid[r, : len(s)] = True
    latent = torch.arange(q_max, device=starts.device).expand(b, -1).clone()  # block q (1-based patch q+1) → o_q
    return BlockLayout(start=start, latent=latent, valid=valid, size=block_size)


def aligned_blocks(starts: torch.Tensor, block_size: int, n_blocks: int, fused_frac: float,
                   generators: list[torch.Generator]) -> BlockLayout:
    """Blocks at sampled starts with the latent each schedule reads there (module docstring).

    starts: BoolTensor [b, N + 1] (patch starts, column N = the next byte); n_blocks: blocks per row,
    at distinct starts m drawn uniformly from 2 .. N (sorted); fused_frac: probability that a block
    reads the fused-schedule latent instead of the provisional one. Row r draws from the CPU
    generator ``generators[r]`` only, so its blocks do not depend on the rest of the batch.
    Raises ValueError for N < 2 or n_blocks < 1.
    """
    b, n1 = starts.shape
    n = n1 - 1
    if n < 2 or n_blocks < 1:
        raise ValueError(f"aligned blocks need N >= 2 bytes and n_blocks >= 1 (got N={n}, n_blocks={n_blocks})")
    q = min(n_blocks, n - 1)
    dev = starts.device
    start = torch.stack([torch.randperm(n - 1, generator=g)[:q] + 2 for g in generators]).sort(1).values
    fused = torch.stack([torch.rand(q, generator=g) < fused_frac for g in generators])
    start, fused = start.to(dev), fused.to(dev)
    enc = P.encoder_patch_ids(starts)                       # [b, N] patch of each byte
    prev_patch = enc.gather(1, start - 1)                   # patch holding byte m − 1
    at_start = starts.gather(1, start)                      # m begins a patch: m − 1 closes one
    cum = torch.cummax(torch.where(starts[:, :n], torch.arange(n, device=dev), 0), 1).values
    open_start = cum.gather(1, start - 1)                   # first byte of byte m − 1's patch
    provisional = ~fused & ~at_start
    latent = torch.where(fused, prev_patch - 1, prev_patch)
    valid = torch.ones(b, q, dtype=torch.bool, device=dev)
    return BlockLayout(start=start, latent=latent, valid=valid, size=block_size,
                       provisional=provisional, open_start=open_start, fused=fused)


def provisional_latents(model, h: torch.Tensor, patch_vecs: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Latents [b, P + Q, d_global]: the P closed-patch latents, then one provisional latent per
    block (used only where ``layout.provisional``), in one global-transformer call.

    h [b, N, d_local] encoder byte states; patch_vecs [b, P, k·d_local] pooled closed patches.
    Provisional row q sits at global position ``layout.latent[q]`` (the open patch's index) and
    attends the closed patches before it and itself, so it equals the latent that generation
    computes when the prefix ends at the block start (Fast BLT §3.1.1, Algorithm 1).
    """
    b, p, _ = patch_vecs.shape
    qn = layout.start.shape[1]
    dev = h.device
    lo = torch.where(layout.provisional, layout.open_start, 0)
    hi = torch.where(layout.provisional, layout.start, 0)
    prov = model.local_encoder.pool_spans(h, lo, hi)
    pos_closed = torch.arange(p, device=dev).expand(b, p)
    pos_prov = torch.where(layout.provisional, layout.latent, 0)
    positions = torch.cat([pos_closed, pos_prov], 1)
    cc = pos_closed[:, :, None] >= pos_closed[:, None, :]
    cp = torch.zeros(b, p, qn, dtype=torch.bool, device=dev)
    pc = pos_closed[:, None, :] < pos_prov[:, :, None]
    pp = torch.eye(qn, dtype=torch.bool, device=dev).expand(b, qn, qn)
    mask = torch.cat([torch.cat([cc, cp], 2), torch.cat([pc, pp], 2)], 1)[:, None]
    return model.global_transformer(torch.cat([patch_vecs, prov], 1), positions, mask=mask)


def block_targets(row: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Clean ids of every slot, BLOCK_PAD_ID past the row end or in invalid blocks.

    row: LongTensor [b, N + 1] (inputs plus the final target byte). Returns [b, Q·B].
    """
    pos = layout.slot_positions
    inside = (pos < row.shape[1]) & layout.slot_valid
    vals = row.gather(1, pos.clamp(max=row.shape[1] - 1))
    return torch.where(inside, vals, torch.full_like(vals, BLOCK_PAD_ID))


def corrupt(targets: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Absorbing-state noise: each non-pad slot becomes MASK_ID with probability t (per row).

    targets [b, S] ids; t [b] in (0, 1]. BLOCK_PAD slots stay BLOCK_PAD (never masked, never scored).
    """
    u = torch.rand(targets.shape, generator=generator, device=targets.device)
    masked = (u < t[:, None]) & (targets != BLOCK_PAD_ID)
    return torch.where(masked, torch.full_like(targets, MASK_ID), targets)


def training_masks(starts: torch.Tensor, layout: BlockLayout, n_latents: int, k: int,
                   window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder masks for [clean (N rows) ; slots (Q·B rows)] (Fast BLT §3.2, Fig. 5), built with
    :func:`~fastblt.model.masks.block_self_mask` and :func:`~fastblt.model.masks.latent_cross_mask`.

    Returns (self_mask bool [b, 1, T, T], cross_mask bool [b, 1, T, n_latents·k]) with T = N + Q·B.
    """
    b, n1 = starts.shape
    n = n1 - 1
    clean_pos = torch.arange(n, device=starts.device).expand(b, n)
    slot_valid = layout.slot_valid
    pos = torch.cat([clean_pos, layout.slot_positions], 1)
    block = torch.cat([torch.full_like(clean_pos, -1), torch.where(slot_valid, layout.slot_block, -2)], 1)
    start = torch.cat([torch.zeros_like(clean_pos), layout.start.repeat_interleave(layout.size, dim=1)], 1)
    self_mask = block_self_mask(pos, block, start, pos, block, window)
    slot_lat = torch.where(slot_valid, layout.latent.repeat_interleave(layout.size, dim=1), -1)
    cross_mask = latent_cross_mask(torch.cat([P.decoder_patch_ids(starts), slot_lat], 1), n_latents, k)
    return self_mask, cross_mask


def forward_training_layout(model, ids: torch.Tensor, starts: torch.Tensor, slot_ids: torch.Tensor,
                            layout: BlockLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """One BLT-D training forward (Fast BLT Fig. 5): encoder + global on clean bytes only, then the
    decoder once on [clean ; slots].

    ids [b, N] clean inputs; starts [b, N + 1]; slot_ids [b, Q·B] (corrupted block contents).
    Returns (clean_logits [b, N, 260], slot_logits [b, Q·B, 260]), float32.
    """
    b, n = ids.shape
    if layout.provisional is None:
        h, latents = model.encode(ids, starts)
    else:
        h, patch_vecs = model.encode(ids, starts, pooled_only=True)
        p = patch_vecs.shape[1]
        latents = provisional_latents(model, h, patch_vecs, layout)
        q = torch.arange(layout.start.shape[1], device=ids.device).expand_as(layout.start)
        layout = BlockLayout(start=layout.start, latent=torch.where(layout.provisional, p + q, layout.latent),
                             valid=layout.valid, size=layout.size)
    n_lat = latents.shape[1]
    if layout.valid.any():
        # blocks whose latent index is past the encoded patches cannot occur: s_q ≤ N ⇒ q − 1 < P
        assert int(layout.latent[layout.valid].max()) < n_lat
    x = torch.cat([h, model.slot_embeddings(slot_ids)], 1)
    pos = torch.cat([torch.arange(n, device=ids.device).expand(b, n), layout.slot_positions], 1)
    self_mask, cross_mask = training_masks(starts, layout, n_lat, model.cfg.cross_attn_k, model.cfg.decoder.window)
    out = model.local_decoder(x, pos, self_mask, model.local_decoder.latent_vectors(latents), cross_mask)
    logits = model.lm_head(out).float()
    return logits[:, :n], logits[:, n:]


def block_logits_inference(model, prefix: torch.Tensor, slot_ids: torch.Tensor,
                           latent: str = "provisional") -> torch.Tensor:
    """Reference (uncached) BLT-D block pass in the inference layout (Fast BLT §3.1.1, Algorithm 1).

    prefix [1, N] clean ids (BOS first); slot_ids [1, B] block contents (MASK_ID where unknown).
    The prefix is patched with the entropy patcher and its end treated as a closed patch; block rows
    attend the whole prefix and the whole block and cross-attend the last latent ("provisional",
    BLT-D / paper schedule) or, with latent="fused", the latent of the last patch closed before
    byte N − 1's patch (what fused BLT-DV reads). Returns slot logits [1, B, 260] float32.
    """
    if latent not in LATENT_KINDS:
        raise ValueError(f"latent must be one of {LATENT_KINDS}, not {latent!r}")
    b, n = prefix.shape
    bsz = slot_ids.shape[1]
    starts = model.patch_starts(prefix)
    h, latents = model.encode(prefix, starts)
    n_lat = latents.shape[1]
    clean_pos = torch.arange(n, device=prefix.device).expand(b, n)
    slot_pos = torch.arange(n, n + bsz, device=prefix.device).expand(b, bsz)
    pos = torch.cat([clean_pos, slot_pos], 1)
    block = torch.cat([torch.full_like(clean_pos, -1), torch.zeros_like(slot_pos)], 1)
    self_mask = block_self_mask(pos, block, torch.full_like(pos, n), pos, block, model.cfg.decoder.window)
    read = n_lat - 1 if latent == "provisional" else int(P.encoder_patch_ids(starts)[0, n - 1]) - 1
    lat = torch.cat([P.decoder_patch_ids(starts), torch.full((b, bsz), read, device=prefix.device)], 1)
    cross_mask = latent_cross_mask(lat, n_lat, model.cfg.cross_attn_k)
    x = torch.cat([h, model.slot_embeddings(slot_ids)], 1)
    out = model.local_decoder(x, torch.cat([clean_pos, slot_pos], 1), self_mask,
                              model.local_decoder.latent_vectors(latents), cross_mask)
    return model.lm_head(out[:, n:]).float()
