"""Incremental BLT state with KV caches (BLT, arXiv 2412.09871 §2.4 incremental patching, §3 the
architecture; Fast BLT, arXiv 2605.08044 §3.1.3 caching).

One sequence (batch 1; tensors keep the batch axis). Four components, each with its own KV
caches and its own frontier (how many bytes or patches it has processed):

    bytes  ids[0..N)        → entropy model (n_pat bytes: patch starts known up to column n_pat)
                            → local encoder (n_enc bytes: byte states h [1, n_enc, d_local])
    closed patches          → pooling + global transformer (n_glob latents; kv [1, n_glob·k, d_local])
    decoder rows            → local decoder (n_dec rows, KV cache)

Patch p spans bytes [starts_idx[p], starts_idx[p+1]); it is *closed* once its successor start is
known, i.e. patches 0 .. len(starts_idx) − 2 are closed. Decoder row i (predicting byte i + 1)
reads the latent of patch ``bisect_right(starts_idx, i + 1) − 2``: the most recently closed patch
once we know whether byte i + 1 starts a new one (patches.decoder_patch_ids).

Every component call processes all pending items at once, so prefill, a one-byte step and a
speculative verification pass are the same four calls (:meth:`BLTState.extend`). Drafting
(BLT-S, BLT-DV) runs decoder rows on a caller-chosen latent (:meth:`decode` with ``kv``) and
then rolls them back (:meth:`crop_decoder`); a BLT-D block pass is :meth:`decode_block`;
:meth:`rollback` drops rejected bytes everywhere. Only this class moves the cache frontiers.

The components run on the model's decode-time weights (:mod:`fastblt.model.packed`: fused,
pre-transposed projections; for float32 on CPU through NumPy, :mod:`fastblt.model.npdecode`),
called through the component modules so that their forward hooks still fire once per NFE.
"""
from __future__ import annotations

from bisect import bisect_right

import torch

from ..model import packed as PK
from ..model.blt import BLT
from ..model.layers import KVCache
from ..model.masks import block_self_mask, latent_cross_mask
from ..patching import patches as P
from .accounting import Counters


def _crop(caches: list[KVCache], n: int) -> None:
    for c in caches:
        c.crop(min(n, c.length))


def _reserve(buf: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """``buf`` if it holds n entries along ``dim``, else a zero-filled copy with twice the room."""
    if buf.shape[dim] >= n:
        return buf
    shape = list(buf.shape)
    shape[dim] = max(n, 2 * shape[dim])
    out = buf.new_zeros(shape)
    out.narrow(dim, 0, buf.shape[dim]).copy_(buf)
    return out


class BLTState:
    """Cached incremental BLT for one sequence. See the module docstring for the frontiers.

    model: a :class:`BLT` in eval mode; counters: shared :class:`Counters` (a new one if None);
    capacity: the longest sequence expected (bytes): the byte states, the latents and the global
    KV caches are preallocated for it (and grow by doubling past it). The sliding-window
    components keep ring-buffer caches whose size does not depend on the sequence
    (:class:`~fastblt.model.layers.KVCache`). Call under ``torch.inference_mode()`` or ``torch.no_grad()``.
    """

    def __init__(self, model: BLT, counters: Counters | None = None, capacity: int = 1024):
        self.model, self.cfg = model, model.cfg
        self.packs = PK.decode_weights(model)  # fused, pre-transposed projections (model/packed.py)
        self.counters = counters if counters is not None else Counters()
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.k = self.cfg.cross_attn_k
        self.history = max(self.cfg.hash_ngram_sizes) - 1  # bytes of n-gram context an encoder step needs
        self.ids: list[int] = []
        self.entropies: list[float] = []  # H_j for j < n_pat (entropy mode)
        self.starts_idx: list[int] = [0]  # columns j <= n_pat with starts[j] = True
        self.n_pat = self.n_enc = self.n_glob = self.n_dec = 0
        self._arange = torch.arange(capacity + 64, device=self.device)[None]  # positions (see _positions)
        cap_p = capacity // 4 + 16  # patches; grown by doubling if the patches are shorter than 4 bytes
        zeros = dict(device=self.device, dtype=self.dtype)
        self._h = torch.zeros(1, capacity, self.cfg.encoder.dim, **zeros)  # byte states, [:, :n_enc] valid
        self._kv = torch.zeros(1, cap_p * self.k, self.cfg.decoder.dim, **zeros)  # latent vectors
        dec = self.cfg.decoder
        # each decoder cross-attention layer's keys and values of every computed latent's vectors
        self._xkv = [(torch.zeros(1, dec.n_heads, cap_p * self.k, dec.head_dim, **zeros),
                      torch.zeros(1, dec.n_heads, cap_p * self.k, dec.head_dim, **zeros))
                     for _ in model.local_decoder.cross_attn_layers]
        self._draft_kv: tuple[torch.Tensor, list] | None = None  # (vectors, their projections) of the last draft latent
        self.ent_caches = model.patcher.new_caches() if model.patcher is not None else []
        self.enc_caches = model.local_encoder.new_caches()
        self.glob_caches = model.global_transformer.new_caches(capacity=cap_p)
        self.dec_caches = model.local_decoder.new_caches()

    # ------------------------------------------------------------------ helpers
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def h(self) -> torch.Tensor:
        """Local-encoder byte states of bytes 0 .. n_enc − 1: [1, n_enc, d_local] (a view)."""
        return self._h[:, :self.n_enc]

    @property
    def kv(self) -> torch.Tensor:
        """Decoder cross-attention vectors of the computed latents: [1, n_glob · k, d_local] (a view)."""
        return self._kv[:, :self.n_glob * self.k]

    def _cross_kv(self, lo: int, hi: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder cross-attention layer's keys/values of latents lo .. hi − 1 (views)."""
        a, b = lo * self.k, hi * self.k
        return [(k[:, :, a:b], v[:, :, a:b]) for k, v in self._xkv]

    def _draft_cross_kv(self, kv: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Projections of caller-given latent vectors, computed once per tensor (a draft reuses it)."""
        if self._draft_kv is None or self._draft_kv[0] is not kv:
            self._draft_kv = (kv, self.model.local_decoder.cross_kv(kv, self.packs.decoder))
        return self._draft_kv[1]

    @property
    def n_closed(self) -> int:
        """Patches whose last byte is known (their successor start is decided)."""
        return len(self.starts_idx) - 1

    def _tensor(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def _positions(self, lo: int, hi: int) -> torch.Tensor:
        """Positions lo .. hi − 1 as LongTensor [1, T]: a view of one arange, grown by doubling."""
        if hi > self._arange.shape[1]:
            self._arange = torch.arange(max(hi, 2 * self._arange.shape[1]), device=self.device)[None]
        return self._arange[:, lo:hi]

    def row_patch(self, i: int) -> int:
        """Index of the latent read by decoder row i (needs the start decision of column i + 1)."""
        return bisect_right(self.starts_idx, i + 1) - 2

    def latent_vectors(self, patch: int) -> torch.Tensor:
        """The k decoder cross-attention vectors of one computed latent: [1, k, d_local]."""
        return self.kv[:, patch * self.k:(patch + 1) * self.k]

    def last_latent_vectors(self) -> torch.Tensor:
        """Vectors of the most recently closed (and computed) patch: [1, k, d_local]."""
        return self.latent_vectors(self.n_glob - 1)

    # ------------------------------------------------------------------ components
    def append(self, ids: list[int]) -> None:
        """Add byte ids to the sequence (nothing runs yet)."""
        self.ids.extend(int(i) for i in ids)

    def patch(self, upto: int | None = None) -> None:
        """Decide patch starts for columns n_pat + 1 .. upto (one entropy-model call in entropy mode)."""
        upto = len(self.ids) if upto is None else upto
        lo = self.n_pat
        if upto <= lo:
            return
        pcfg = self.cfg.patching
        if pcfg.mode == "entropy":
            logits = self.model.patcher(self._tensor(self.ids[lo:upto]), caches=self.ent_caches,
                                        packed=self.packs.entropy)
            if PK.uses_numpy(self.packs.entropy):  # float32 on CPU: in NumPy, like the stacks
                logits = PK.as_numpy(logits)
            self.entropies.extend(P.entropies_from_logits(logits)[0].tolist())
            self.counters.entropy_nfe += 1
        for j in range(lo + 1, upto + 1):  # column j: does byte j start a patch?
            h1 = self.entropies[j - 1] if pcfg.mode == "entropy" else None
            h2 = self.entropies[j - 2] if pcfg.mode == "entropy" and j >= 2 else None
            if P.is_patch_start(pcfg, h1, h2, self.ids[j - 1], j - self.starts_idx[-1], j):
                self.starts_idx.append(j)
        self.n_pat = upto

    def encode(self, upto: int | None = None) -> None:
        """Local-encoder states of bytes n_enc .. upto − 1 (one call)."""
        upto = len(self.ids) if upto is None else upto
        lo = self.n_enc
        if upto <= lo:
            return
        x = self.model.embed_incremental(self.ids, lo, upto)  # only the new bytes' hash n-grams
        h = self.model.local_encoder(x, self._positions(lo, upto), self.enc_caches, packed=self.packs.encoder)
        self._h = _reserve(self._h, upto, 1)
        self._h[:, lo:upto] = h
        self.n_enc = upto
        self.counters.encoder_steps += 1

    def close_patches(self, provisional: bool = False) -> torch.Tensor | None:
        """Pool every closed patch without a latent and run the global transformer on them (one call).

        provisional: also pool the open patch (bytes starts_idx[-1] .. n_pat − 1) as if it were
        closed, in the same call, and return the k decoder vectors of the newest latent
        ([1, k, d_local]; BLT-D / paper-schedule drafting latent, Fast BLT §3.1.1); the open
        patch's latent is not kept in the cache. Returns None when not provisional.
        """
        if self.n_enc < self.n_pat:
            raise RuntimeError("encode the patched bytes before closing patches")
        lo_p, hi_p = self.n_glob, self.n_closed
        spans = [(self.starts_idx[p], self.starts_idx[p + 1]) for p in range(lo_p, hi_p)]
        open_span = (self.starts_idx[-1], self.n_pat)
        with_open = provisional and open_span[1] > open_span[0]
        if with_open:
            spans.append(open_span)
        if spans:
            b0, b1 = spans[0][0], spans[-1][1]
            if PK.uses_numpy(self.packs.encoder) or len(spans) == 1:  # patch by patch (a decode step closes one)
                vecs = torch.cat([PK.pool_one(self.model.local_encoder, self.packs.encoder, self.h[:, s:e])
                                  for s, e in spans], 1)
            else:
                pid = torch.full((1, b1 - b0), -1, dtype=torch.long, device=self.device)
                for q, (s, e) in enumerate(spans):
                    pid[0, s - b0:e - b0] = q
                vecs = self.model.local_encoder.pool(self.h[:, b0:b1], pid, len(spans))
            latents = self.model.global_transformer(vecs, caches=self.glob_caches, packed=self.packs.global_)
            self.counters.global_nfe += 1
            kv = PK.latent_vectors(self.model.local_decoder, self.packs.decoder, latents)
            a, b = lo_p * self.k, hi_p * self.k
            if b > a:
                self._kv = _reserve(self._kv, b, 1)
                self._kv[:, a:b] = kv[:, :b - a]
                for i, (k_new, v_new) in enumerate(self.model.local_decoder.cross_kv(kv[:, :b - a], self.packs.decoder)):
                    k_buf, v_buf = _reserve(self._xkv[i][0], b, 2), _reserve(self._xkv[i][1], b, 2)
                    k_buf[:, :, a:b], v_buf[:, :, a:b] = k_new, v_new
                    self._xkv[i] = (k_buf, v_buf)
            self.n_glob = hi_p
            if with_open:
                _crop(self.glob_caches, hi_p)
                return kv[:, -self.k:]
        return self.last_latent_vectors() if provisional else None

    def _own_latents(self, lo: int, hi: int) -> tuple[int, list[int]]:
        """The latents read by decoder rows lo .. hi − 1 under the BLT rule: (the first one's index,
        each row's latent relative to it). Needs the patch starts through column hi and the closed
        patches' latents."""
        if self.n_pat < hi:
            raise RuntimeError("patch the bytes before decoding them with their own latents")
        rows = [self.row_patch(i) for i in range(lo, hi)]
        if rows[-1] >= self.n_glob:
            raise RuntimeError("close the patches before decoding")
        return rows[0], [r - rows[0] for r in rows]

    def _run_decoder(self, x: torch.Tensor, q_pos: torch.Tensor, self_mask: torch.Tensor | None, kv,
                     cross: torch.Tensor | None) -> torch.Tensor:
        """One local-decoder call on rows x [1, T, d] through the cache (one decoder NFE) → logits [1, T, 260] f32."""
        out = self.model.local_decoder(x, q_pos, self_mask, kv, cross, self.dec_caches, packed=self.packs.decoder)
        self.counters.decoder_nfe += 1
        return PK.logits(self.packs.decoder, out, None)

    def decode(self, upto: int | None = None, kv: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder rows n_dec .. upto − 1 (one call) → logits [1, T, 260] float32.

        kv None: each row reads its own latent (BLT rule; needs patch starts through column upto
        and the closed patches computed). kv [1, k, d_local]: every row reads these vectors
        (drafting; roll the rows back with :meth:`crop_decoder` before verifying).
        """
        upto = len(self.ids) if upto is None else upto
        lo = self.n_dec
        if upto <= lo or upto > self.n_enc:
            raise RuntimeError(f"cannot decode rows {lo}..{upto} with {self.n_enc} encoded bytes")
        cross = None
        if kv is None:
            first, row_latent = self._own_latents(lo, upto)
            n_lat = row_latent[-1] + 1
            xkv = self._cross_kv(first, first + n_lat)
            if n_lat > 1:  # rows read different latents (else every row reads all of them)
                cross = latent_cross_mask(torch.tensor([row_latent], device=self.device), n_lat, self.k)
        else:
            xkv = self._draft_cross_kv(kv)
        pos = self._positions(lo, upto)  # self mask: the causal window rule, built over the cached keys
        logits = self._run_decoder(self.h[:, lo:upto], pos, None, xkv, cross)
        self.n_dec = upto
        return logits

    def decode_block(self, slot_ids: list[int], kv_block: torch.Tensor,
                     clean_kv: torch.Tensor | None = None,
                     with_clean: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One BLT-D decoder pass in the inference layout (Fast BLT §3.1.1, Fig. 3; one decoder NFE).

        Rows: the clean rows n_dec .. N − 1 not yet decoded (they enter the decoder KV cache), then B
        slot rows at positions N .. N + B − 1 with inputs ``model.slot_embeddings(slot_ids)``, dropped
        from the cache afterwards. N = len(self); the prefix must be encoded.

        slot_ids: B ids (byte ids or MASK_ID). kv_block [1, k, d_local]: the latent vectors every slot
        cross-attends (o_M from ``close_patches(provisional=True)``). clean_kv: None → clean rows read
        their own latent (BLT rule: patch starts through column N and closed-patch latents needed);
        [1, k, d_local] → every clean row reads these (drafting on a fixed latent; rows redone later).
        Returns slot logits [1, B, 260] float32; equals ``diffusion.block_logits_inference`` when the
        clean rows follow the BLT rule and kv_block is the provisional last latent. with_clean: return
        (clean-row logits [1, n_clean, 260], slot logits) — clean rows attend only clean keys, so
        each is the cached decoder step of its byte on the latent it read.
        """
        n, lo, b = len(self.ids), self.n_dec, len(slot_ids)
        if self.n_enc < n:
            raise RuntimeError("encode the prefix before a block pass")
        n_clean = n - lo
        row_latent: list[int] = []  # each clean row's latent among the clean rows' keys
        clean_pairs = self._cross_kv(0, 0)
        if n_clean and clean_kv is None:
            first, row_latent = self._own_latents(lo, n)
            clean_pairs = self._cross_kv(first, first + row_latent[-1] + 1)
        elif n_clean:
            clean_pairs, row_latent = self._draft_cross_kv(clean_kv), [0] * n_clean
        n_lat = row_latent[-1] + 1 if row_latent else 0  # then the block's latent, index n_lat
        xkv = [(torch.cat([k, bk], 2), torch.cat([v, bv], 2))  # projections computed once per latent
               for (k, v), (bk, bv) in zip(clean_pairs, self._draft_cross_kv(kv_block))]
        cross = latent_cross_mask(torch.tensor([row_latent + [n_lat] * b], device=self.device), n_lat + 1, self.k)
        q_pos = self._positions(lo, n + b)
        first_key = self.dec_caches[0].first_key(n + b - lo)  # self-attention keys: the ones the cache returns
        block = torch.tensor([[-1] * (n - first_key) + [0] * b], device=self.device)  # −1: clean row; 0: the block
        self_mask = block_self_mask(q_pos, block[:, lo - first_key:], torch.full_like(q_pos, n),
                                    self._positions(first_key, n + b), block, self.cfg.decoder.window)
        slots = self.model.slot_embeddings(self._tensor(slot_ids)).to(self.dtype)
        logits = self._run_decoder(torch.cat([self.h[:, lo:n], slots], 1), q_pos, self_mask, xkv, cross)
        self.n_dec = n
        self.crop_decoder(n)  # the slot rows leave the cache
        if with_clean:
            return logits[:, :n_clean], logits[:, n_clean:]
        return logits[:, n_clean:]

    # ------------------------------------------------------------------ whole steps
    def extend(self, ids: list[int]) -> torch.Tensor:
        """Append bytes and run every component once over them (prefill, a cached step, or a
        verification pass). Returns the logits of the new rows [1, len(ids), 260] float32."""
        self.append(ids)
        return self.advance()

    def advance(self) -> torch.Tensor:
        """Bring every component up to the end of the sequence; logits of the new decoder rows."""
        self.patch()
        self.encode()
        self.close_patches()
        return self.decode()

    def crop_decoder(self, n: int) -> None:
        """Forget decoder rows ≥ n (drafted rows)."""
        self.n_dec = min(self.n_dec, n)
        _crop(self.dec_caches, self.n_dec)

    def rollback(self, n: int) -> None:
        """Keep only the first n bytes: crop every frontier, cache and patch decision past them."""
        if n < 0 or n > len(self.ids):
            raise ValueError(f"cannot roll back a sequence of {len(self.ids)} bytes to {n}")
        del self.ids[n:]
        self.n_pat = min(self.n_pat, n)
        del self.entropies[self.n_pat:]
        self.starts_idx = self.starts_idx[:bisect_right(self.starts_idx, self.n_pat)]
        _crop(self.ent_caches, self.n_pat if self.cfg.patching.mode == "entropy" else 0)
        self.n_enc = min(self.n_enc, n)
        _crop(self.enc_caches, self.n_enc)
        self.n_glob = min(self.n_glob, self.n_closed)
        _crop(self.glob_caches, self.n_glob)
        self.crop_decoder(n)

    def starts(self) -> torch.Tensor:
        """Patch starts decided so far as a BoolTensor [1, n_pat + 1] (patches.compute_starts layout)."""
        s = torch.zeros(1, self.n_pat + 1, dtype=torch.bool)
        s[0, self.starts_idx] = True
        return s
