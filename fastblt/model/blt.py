"""The Byte Latent Transformer (Pagnoni et al., arXiv 2412.09871), faithful to the released weights.

Data flow for ids [B, N]:
    byte + hash n-gram embeddings → local encoder (sliding-window causal) → h_enc [B, N, d_local]
    patch starts (entropy model) → max-pool + k queries per patch → cross-attention to the
    patch's own bytes → patch vectors [B, P, k·d_local]
    global transformer (causal over patches) → latents o [B, P, d_global]
    local decoder on h_enc, cross-attending in every layer to the k vectors of the latent of the
    last patch complete before the target byte → RMSNorm → lm_head → logits [B, N, 260].

Module and parameter names follow the transformers ``Blt*`` layout so that HF-format checkpoints
map one to one (see :mod:`fastblt.checkpoint`). The components are also exposed separately
(:meth:`BLT.embed`, :meth:`LocalEncoder.pool`, :meth:`LocalDecoder.forward`) so that cached
generation and the BLT-D objective can drive them with their own positions and masks.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import VOCAB_SIZE, BLTConfig, StackConfig
from ..patching import patches as P
from .hashing import hash_ngram_ids, hash_ngram_rows
from .layers import Block, CrossAttention, KVCache, RMSNorm, RopeTable, causal_window_mask, fix_empty_rows
from .masks import latent_cross_mask
from .packed import PackedStack, run_blocks, run_decoder
from .packed import cross_kv as packed_cross_kv
from .packed import logits as packed_logits

ROPE_MARGIN = 1024  # positions past max_seq_len a stack's RoPE table covers (BLT-D slots after the last byte)


def _self_mask(positions: torch.Tensor, caches: list[KVCache] | None, window: int | None) -> torch.Tensor | None:
    """Causal (sliding-window) mask of the queries at ``positions`` [B, T] over the keys this call sees:
    positions ``caches[0].first_key(T)`` .. end with a cache (0 .. T − 1 without). None when every
    key is visible (one query over a window-bounded cache)."""
    b, t = positions.shape
    if not caches:
        return causal_window_mask(positions, positions, window)
    c = caches[0]
    a, end = c.first_key(t), c.length + t
    if t == 1 and (window is None or end - a <= window):
        return None
    keys = torch.arange(a, end, device=positions.device).expand(b, -1)
    return causal_window_mask(positions, keys, window)


class Stack(nn.Module):
    """A plain stack of blocks with RoPE; ``forward`` takes its own positions and mask."""

    def __init__(self, cfg: StackConfig, max_positions: int = 24576 + ROPE_MARGIN):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.rope = RopeTable(cfg.head_dim, cfg.rope_theta, max_positions)

    def run_layers(self, x, positions, mask, caches=None, packed: PackedStack | None = None):
        """x [B, T, dim] at ``positions`` [B, T]; mask over the keys each layer sees (see SelfAttention;
        built by :func:`_self_mask`, so no row is fully masked). packed: this stack's decode-time
        weights (:func:`~fastblt.model.packed.decode_weights`; cached generation), run instead of the modules."""
        if packed is not None:
            return run_blocks(packed, x, positions, mask, caches)
        rope = self.rope(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, mask, caches[i] if caches is not None else None)
        return x

    def new_caches(self, capacity: int | None = None, slack: int | None = None) -> list[KVCache]:
        """One static KV cache per layer: ring buffers of window + slack slots (slack default: the
        window) for a sliding-window stack, else buffers of ``capacity`` positions (grown if needed)."""
        return [KVCache(self.cfg.window, capacity, slack) for _ in self.layers]


class EntropyModel(Stack):
    """The small causal byte LM whose next-byte entropies place patch boundaries (BLT §2.3)."""

    def __init__(self, cfg: StackConfig, max_positions: int = 24576 + ROPE_MARGIN):
        super().__init__(cfg, max_positions)
        self.embed_tokens = nn.Embedding(VOCAB_SIZE, cfg.dim)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, VOCAB_SIZE, bias=False)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                caches: list[KVCache] | None = None, packed: PackedStack | None = None) -> torch.Tensor:
        """ids LongTensor [B, T] → next-byte logits [B, T, 260] (float32).

        With ``caches``, ids are the next T bytes after the cached ones (positions continue);
        packed: decode-time weights (:meth:`Stack.run_layers`).
        """
        b, t = ids.shape
        if positions is None:
            start = caches[0].length if caches else 0
            positions = torch.arange(start, start + t, device=ids.device).expand(b, t)
        mask = _self_mask(positions, caches, self.cfg.window)
        x = self.run_layers(self.embed_tokens(ids), positions, mask, caches, packed)
        if packed is not None:
            return packed_logits(packed, x, self.norm.weight)
        return self.lm_head(self.norm(x)).float()


class LocalEncoder(Stack):
    def __init__(self, cfg: StackConfig, n_input_ids: int, k: int, all_layers: bool, double_residual: bool,
                 max_positions: int = 24576 + ROPE_MARGIN):
        super().__init__(cfg, max_positions)
        self.k, self.double_residual = k, double_residual
        self.embed_tokens = nn.Embedding(n_input_ids, cfg.dim)
        self.patch_embedding_projection = nn.Linear(cfg.dim, cfg.dim * k, bias=False)
        n_x = cfg.n_layers if all_layers else 1
        self.cross_attn_layers = nn.ModuleList(CrossAttention(cfg.dim, cfg.n_heads, cfg.norm_eps) for _ in range(n_x))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, caches: list[KVCache] | None = None,
                packed: PackedStack | None = None) -> torch.Tensor:
        """Byte embeddings x [B, T, d] → encoder byte states h [B, T, d] (no final norm)."""
        return self.run_layers(x, positions, _self_mask(positions, caches, self.cfg.window), caches, packed)

    def pool(self, h: torch.Tensor, patch_ids: torch.Tensor, n_patches: int) -> torch.Tensor:
        """Patch vectors by cross-attention pooling (BLT §3.2.2).

        h [B, T, d] byte states; patch_ids LongTensor [B, T] in [0, n_patches) (−1 or ≥ n_patches:
        ignored). Returns [B, n_patches, k·d]. Queries start as the max-pool of each patch's byte
        states, projected to k vectors; each attends only to its own patch's bytes.
        """
        b, t, d = h.shape
        valid = (patch_ids >= 0) & (patch_ids < n_patches)
        idx = torch.where(valid, patch_ids, torch.full_like(patch_ids, n_patches))
        pooled = h.new_zeros(b, n_patches + 1, d).scatter_reduce(
            1, idx[..., None].expand(b, t, d), h, reduce="amax", include_self=False)[:, :n_patches]
        q_patch = torch.arange(n_patches, device=h.device)
        return self._attend(pooled, h, q_patch[None, :, None] == idx[:, None, :])

    def pool_spans(self, h: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Patch vectors of arbitrary (possibly overlapping) byte spans [lo, hi), as :meth:`pool`.

        Used by BLT-D training for the *provisional* latent of an open patch cut at a block start
        (Fast BLT §3.1.1, Fig. 3: the prefix end is pooled as if it closed a patch). h [B, T, d];
        lo, hi LongTensor [B, M] (an empty span, hi ≤ lo, gives an unused vector).
        Returns [B, M, k·d]; equals :meth:`pool` on the same spans when they do not overlap.
        """
        t = torch.arange(h.shape[1], device=h.device)
        member = (t[None, None, :] >= lo[..., None]) & (t[None, None, :] < hi[..., None])  # [B, M, T]
        neg = torch.finfo(h.dtype).min
        pooled = torch.where(member[..., None], h[:, None], neg).amax(2)
        pooled = torch.where(member.any(-1, keepdim=True), pooled, 0.0)
        return self._attend(pooled, h, member)

    def _attend(self, pooled: torch.Tensor, h: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
        """k queries per patch from its max-pool ``pooled`` [B, M, d], cross-attending the bytes
        where ``member`` [B, M, T] is True (BLT §3.2.2) → [B, M, k·d]."""
        b, m, d = pooled.shape
        q = self.patch_embedding_projection(pooled).reshape(b, m * self.k, d)
        out = self.cross_attn_layers[-1](q, h, member.repeat_interleave(self.k, dim=1)[:, None])
        if self.double_residual:
            out = out + q
        return out.reshape(b, m, self.k * d)


class GlobalTransformer(Stack):
    def __init__(self, cfg: StackConfig, input_dim: int, max_positions: int = 24576 + ROPE_MARGIN):
        super().__init__(cfg, max_positions)
        self.token_embedding_projection = (
            nn.Linear(input_dim, cfg.dim, bias=False) if input_dim != cfg.dim else None)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                caches: list[KVCache] | None = None, mask: torch.Tensor | None = None,
                packed: PackedStack | None = None) -> torch.Tensor:
        """Patch vectors x [B, P, k·d_local] → latents [B, P, d_global] (causal over patches, no final norm).

        mask: optional bool [B, 1, P, P] replacing the causal mask (BLT-D training appends
        provisional patches that attend only the closed patches before them and themselves).
        """
        b, p, _ = x.shape
        if positions is None:
            start = caches[0].length if caches else 0
            positions = torch.arange(start, start + p, device=x.device).expand(b, p)
        if self.token_embedding_projection is not None:
            x = self.token_embedding_projection(x)
        mask = _self_mask(positions, caches, None) if mask is None else fix_empty_rows(mask)
        return self.run_layers(x, positions, mask, caches, packed)


class LocalDecoder(Stack):
    def __init__(self, cfg: StackConfig, global_dim: int, k: int, all_layers: bool, double_residual: bool,
                 max_positions: int = 24576 + ROPE_MARGIN):
        super().__init__(cfg, max_positions)
        self.k, self.all_layers, self.double_residual = k, all_layers, double_residual
        self.patch_embedding_projection = nn.Linear(global_dim, cfg.dim * k, bias=False)
        n_x = cfg.n_layers if all_layers else 1
        self.cross_attn_layers = nn.ModuleList(CrossAttention(cfg.dim, cfg.n_heads, cfg.norm_eps) for _ in range(n_x))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def latent_vectors(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, P, d_global] → the k cross-attention vectors of each: [B, P·k, d_local]."""
        b, p, _ = latents.shape
        return self.patch_embedding_projection(latents).reshape(b, p * self.k, self.cfg.dim)

    def cross_kv(self, kv: torch.Tensor, packed: PackedStack | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Latent vectors kv [B, M, d] → each cross-attention layer's (keys, values) [B, H, M, head_dim],
        to compute once per latent and pass to :meth:`forward` instead of kv (packed: with the
        decode-time weights)."""
        if packed is not None:
            return packed_cross_kv(packed, kv)
        return [x.project_kv(kv) for x in self.cross_attn_layers]

    def forward(self, h: torch.Tensor, positions: torch.Tensor, self_mask: torch.Tensor | None,
                kv: torch.Tensor | list[tuple[torch.Tensor, torch.Tensor]],
                cross_mask: torch.Tensor | None, caches: list[KVCache] | None = None,
                packed: PackedStack | None = None) -> torch.Tensor:
        """Decoder hidden states after the final norm, [B, T, d_local].

        h [B, T, d] input rows (encoder byte states, or BLT-D slot embeddings); positions [B, T];
        self_mask bool [B, 1, T, K] over key positions 0 .. L_cache + T − 1, or over the keys the
        caches return (``caches[0].first_key(T)`` .. L_cache + T − 1), or None for the causal
        sliding-window rule; kv [B, M, d] latent vectors from :meth:`latent_vectors` (or
        their :meth:`cross_kv` projections); cross_mask bool [B, 1, T, M] (None: every row sees all of kv);
        packed: decode-time weights (:meth:`Stack.run_layers`).
        """
        if self_mask is None:
            self_mask = _self_mask(positions, caches, self.cfg.window)
        else:
            if caches:  # a sliding-window cache returns only the keys from first_key on
                first, end = caches[0].first_key(h.shape[1]), caches[0].length + h.shape[1]
                if first and self_mask.shape[-1] == end:
                    self_mask = self_mask[..., first:]
            self_mask = fix_empty_rows(self_mask)
        if packed is not None:
            pairs = self.cross_kv(kv, packed) if isinstance(kv, torch.Tensor) else kv
            return run_decoder(packed, h, positions, self_mask, pairs, cross_mask, caches, self.double_residual,
                               self.norm.weight)
        rope = self.rope(positions)
        for i, layer in enumerate(self.layers):
            if i == 0 or self.all_layers:
                x_kv = kv if isinstance(kv, torch.Tensor) else kv[i]
                out = self.cross_attn_layers[i](h, x_kv, cross_mask)
                h = out + h if self.double_residual else out
            h = layer(h, rope, self_mask, caches[i] if caches is not None else None)
        return self.norm(h)


class BLT(nn.Module):
    """A BLT or BLT-D model. ``model(ids)`` returns next-byte logits [B, N, 260] (float32)."""

    def __init__(self, cfg: BLTConfig):
        super().__init__()
        self.cfg = cfg
        n_tables = cfg.hash_functions * len(cfg.hash_ngram_sizes)
        self.encoder_hash_tok_embedding = nn.Embedding(n_tables * cfg.hash_vocab, cfg.encoder.dim)
        n_pos = cfg.max_seq_len + ROPE_MARGIN
        self.local_encoder = LocalEncoder(cfg.encoder, cfg.n_input_ids, cfg.cross_attn_k,
                                          cfg.encoder_cross_attn_all_layers, cfg.double_residual, n_pos)
        self.global_transformer = GlobalTransformer(cfg.global_, cfg.global_input_dim, n_pos)
        self.local_decoder = LocalDecoder(cfg.decoder, cfg.global_.dim, cfg.cross_attn_k,
                                          cfg.decoder_cross_attn_all_layers, cfg.double_residual, n_pos)
        self.lm_head = nn.Linear(cfg.decoder.dim, VOCAB_SIZE, bias=False)
        self.patcher = EntropyModel(cfg.entropy, n_pos) if cfg.entropy is not None else None
        if self.patcher is not None:
            self.patcher.requires_grad_(False)

    # ----------------------------------------------------------------- pieces
    def check_ids(self, ids: torch.Tensor, allow_mask_ids: bool = False) -> None:
        """Raise ValueError unless ids is an integer tensor [B, N] of valid BLT ids."""
        if not isinstance(ids, torch.Tensor):
            raise ValueError(f"ids must be a torch.LongTensor [batch, seq], got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids must be an integer tensor (torch.long), got {ids.dtype}")
        if ids.dim() != 2:
            raise ValueError(f"ids must have shape [batch, seq], got {tuple(ids.shape)}")
        if ids.shape[1] == 0:
            raise ValueError("ids is empty: start sequences with BOS (id 1)")
        if ids.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {ids.shape[1]} bytes exceeds max_seq_len {self.cfg.max_seq_len}")
        hi = self.cfg.n_input_ids if allow_mask_ids else VOCAB_SIZE
        lo_v, hi_v = int(ids.min()), int(ids.max())
        if lo_v < 0 or hi_v >= hi:
            raise ValueError(f"ids must lie in [0, {hi}); found values in [{lo_v}, {hi_v}]")

    def embed(self, ids: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """Byte + hash n-gram embeddings (BLT eq. 3), summed without normalisation. ids [B, T] → [B, T, d].

        history: optional ids [B, H] that precede ``ids`` (for the n-gram windows of incremental calls).
        """
        full = ids if history is None else torch.cat([history, ids], dim=1)
        rows = hash_ngram_ids(full, self.cfg.hash_ngram_sizes, self.cfg.hash_vocab, self.cfg.hash_functions)
        rows = rows[:, full.shape[1] - ids.shape[1]:]
        return self.local_encoder.embed_tokens(ids) + self.encoder_hash_tok_embedding(rows).sum(-2)

    def embed_incremental(self, seq: list[int], start: int, end: int | None = None) -> torch.Tensor:
        """:meth:`embed` of positions start .. end − 1 (default: to the end) of the sequence ``seq`` (BLT
        ids), hashing only those positions' n-grams (:func:`~fastblt.model.hashing.hash_ngram_rows`).
        Returns [1, T, d]."""
        cfg = self.cfg
        end = len(seq) if end is None else end
        lo = max(0, start - max(cfg.hash_ngram_sizes) + 1)
        rows = hash_ngram_rows(seq[lo:end], start - lo, cfg.hash_ngram_sizes, cfg.hash_vocab, cfg.hash_functions)
        table, byte_table = self.encoder_hash_tok_embedding.weight, self.local_encoder.embed_tokens.weight
        if table.device.type == "cpu" and table.dtype == torch.float32 and not torch.is_grad_enabled():
            # generation: gather in NumPy (same summation order, so equal to the torch path bit for bit)
            x = byte_table.numpy()[seq[start:end]] + table.numpy()[rows].sum(1)
            return torch.from_numpy(x)[None]
        ids = torch.tensor([seq[start:end]], dtype=torch.long, device=table.device)
        rows_t = torch.from_numpy(rows).to(table.device)[None]
        return self.local_encoder.embed_tokens(ids) + self.encoder_hash_tok_embedding(rows_t).sum(-2)

    @torch.no_grad()
    def entropies(self, ids: torch.Tensor) -> torch.Tensor:
        """Entropy model next-byte entropies in nats, [B, N] float32."""
        if self.patcher is None:
            raise ValueError("this model has no entropy model")
        return P.entropies_from_logits(self.patcher(ids))

    def patch_starts(self, ids: torch.Tensor) -> torch.Tensor:
        """Patch starts [B, N + 1] for ids [B, N] with this model's patching rule (see fastblt.patching)."""
        ent = self.entropies(ids) if self.cfg.patching.mode == "entropy" else None
        return P.compute_starts(self.cfg.patching, ids, ent)

    def slot_embeddings(self, slot_ids: torch.Tensor) -> torch.Tensor:
        """BLT-D decoder input of block slots (Fast BLT §3.2.2, D_0 = Embed(x_block^t); the paper leaves
        the embedding open). Our choice: the encoder byte-table row of the slot's id (a byte id, MASK_ID
        or BLOCK_PAD_ID), without hash n-grams (n-grams over masks are ill-defined). [B, T] → [B, T, d]."""
        return self.local_encoder.embed_tokens(slot_ids)

    def encode(self, ids: torch.Tensor, starts: torch.Tensor,
               pooled_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Local encoder + global transformer. Returns (h_enc [B, N, d_local], latents [B, P, d_global]);
        with ``pooled_only`` the patch vectors [B, P, k·d_local] before the global transformer."""
        b, n = ids.shape
        pos = torch.arange(n, device=ids.device).expand(b, n)
        h = self.local_encoder(self.embed(ids), pos)
        n_p = int(P.num_patches(starts).max())
        patch_vecs = self.local_encoder.pool(h, P.encoder_patch_ids(starts), n_p)
        return h, (patch_vecs if pooled_only else self.global_transformer(patch_vecs))

    def decode_clean(self, h: torch.Tensor, latents: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Causal local decoder over clean bytes (BLT latent rule) → logits [B, N, 260] float32."""
        b, n, _ = h.shape
        pos = torch.arange(n, device=h.device).expand(b, n)
        kv = self.local_decoder.latent_vectors(latents)
        cross = latent_cross_mask(P.decoder_patch_ids(starts), latents.shape[1], self.cfg.cross_attn_k)
        self_mask = causal_window_mask(pos, pos, self.cfg.decoder.window)
        return self.lm_head(self.local_decoder(h, pos, self_mask, kv, cross)).float()

    # ----------------------------------------------------------------- full forward
    def forward(self, ids: torch.Tensor, starts: torch.Tensor | None = None) -> torch.Tensor:
        """Next-byte logits for every position, the semantics of ``BltForCausalLM(ids).logits``.

        ids: LongTensor [B, N] of BLT ids (byte + 4; BOS = 1 first). starts: optional BoolTensor
        [B, N + 1] of patch starts (computed with the entropy model when None).
        Returns float32 [B, N, 260]. Raises ValueError for invalid ids or shapes.
        """
        self.check_ids(ids)
        ids = ids.long()
        if starts is None:
            starts = self.patch_starts(ids)
        elif starts.shape != (ids.shape[0], ids.shape[1] + 1) or starts.dtype != torch.bool:
            raise ValueError(f"starts must be a bool tensor [B, N + 1] = {(ids.shape[0], ids.shape[1] + 1)}")
        h, latents = self.encode(ids, starts)
        return self.decode_clean(h, latents, starts)
