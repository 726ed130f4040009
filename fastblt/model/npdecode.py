"""The packed decode-time forward (:mod:`fastblt.model.packed`) in NumPy, for float32 on CPU.

Why a second implementation: at batch 1 a decode step is a chain of ~200 tiny operations over
~12 MB of weights and KV caches, which on CPU is bound by per-operation dispatch and by how fast
one core streams weights from memory. Measured on the 2-core AMD EPYC machine of this project
(``scripts/bench_speed.py``, docs/speed.md): a NumPy operation costs ~0.5 µs against torch's
~2 µs, and NumPy's OpenBLAS streams a [1, d] × [d, n] product from memory at about twice the
rate of torch's MKL (which takes a generic path on AMD CPUs). The math is that of
:mod:`fastblt.model.packed` line for line; tests check the two agree to 1e-5 and that every
cached == uncached and lossless contract holds with either.

Arrays are NumPy views of the packs' torch tensors (no copy): shapes as in :mod:`~fastblt.model.packed`,
rows [B·T, dim], attention tensors [B, H, T, hd], masks bool [B or 1, 1, T, K] (True = attend).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .layers import KVCache

SMALL_GEMM = 786432  # M·K·N up to which a product stays on OpenBLAS's fast path for a few rows (measured)
SMALL_ATTENTION = 2048  # query rows × keys up to which attention runs in NumPy rather than torch's kernel (measured)


def mm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [M, K] @ w [K, N] (float32), in row chunks that keep OpenBLAS on its fast path.

    Measured on this project's 2-core AMD EPYC (one thread): a product of a few rows runs at up to
    ~100 GFLOP/s while M·K·N ≤ ~0.8M and M is a power of two, but drops 3-7x past that (the
    packing path) or at M = 3 (e.g. [8, 128] @ [128, 1024]: 77 µs at once, 23 µs as two chunks
    of 4). So: chunks of the largest power of two c with c·K·N under :data:`SMALL_GEMM`, and a
    remainder padded with zero rows to a power of two. A weight too large for two rows per chunk
    (over 1.5 MB: the ``1b`` preset's) takes the one product: streaming it once per row would cost
    more than the packing path. Rows are independent: each row's result is that of a product of
    its own chunk."""
    m = x.shape[0]
    if m <= 2:
        return x @ w
    k, n = w.shape
    c = min(16, SMALL_GEMM // (k * n))
    if c < 2:
        return x @ w
    c = 1 << (c.bit_length() - 1)  # a power of two
    if m <= c and m & (m - 1) == 0:
        return x @ w
    out = np.empty((m, n), np.float32)
    for i in range(0, m, c):
        j = min(i + c, m)
        r = j - i
        if r & (r - 1) == 0:
            np.matmul(x[i:j], w, out=out[i:j])
        else:  # pad the chunk to a power of two
            xp = np.zeros((1 << r.bit_length(), k), np.float32)
            xp[:r] = x[i:j]
            out[i:j] = (xp @ w)[:r]
    return out


def norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm of rows x [N, dim] with weight w [dim] (float32)."""
    if x.shape[0] == 1:  # a decode step: the sum of squares as one dot product, the scale in Python
        r = x[0]
        return x * (w * (1.0 / math.sqrt(float(np.dot(r, r)) / r.shape[0] + eps)))
    ms = np.add.reduce(x * x, axis=-1, keepdims=True)
    ms *= 1.0 / x.shape[-1]
    ms += eps
    return x * (1.0 / np.sqrt(ms, out=ms)) * w


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """softmax(q kᵀ / √hd) v with grouped KV heads: q [B, H, T, hd], k/v [B, H_kv, K, hd], mask bool
    [B or 1, 1, T, K] or None (every row must admit a key) → [B, H, T, hd].

    Many query-key pairs go to torch's fused kernel on the same memory; few (one query row, or a
    global call's few patches over a short cache: T·K ≤ :data:`SMALL_ATTENTION`) stay in NumPy, where
    dispatch costs less (measured: +3–8% for BLT-S, +2–4% for BLT-D in A/B runs in one process)."""
    if q.shape[2] > 1 and q.shape[2] * k.shape[2] > SMALL_ATTENTION:
        m = None if mask is None else torch.from_numpy(mask)
        return F.scaled_dot_product_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                                              attn_mask=m, enable_gqa=k.shape[1] != q.shape[1]).numpy()
    g = q.shape[1] // k.shape[1]
    if g > 1:
        k, v = np.repeat(k, g, 1), np.repeat(v, g, 1)
    s = np.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.swapaxes(-1, -2))
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    s -= s.max(-1, keepdims=True)
    np.exp(s, out=s)
    s /= np.add.reduce(s, axis=-1, keepdims=True)
    return np.matmul(s, v)


def block(ps, blk, h: np.ndarray, b: int, t: int, rope: np.ndarray, mask: np.ndarray | None,
          cache: KVCache | None) -> np.ndarray:
    """:func:`fastblt.model.packed.block` on rows h [B·T, dim]; rope complex64 [B, T, 1, hd / 2]."""
    nh, nkv, hd = ps.n_heads, ps.n_kv_heads, ps.head_dim
    qkv = mm(norm(h, blk.attn_norm, ps.eps), blk.wqkv)
    qk = (qkv[:, :(nh + nkv) * hd].view(np.complex64).reshape(b, t, nh + nkv, hd // 2) * rope)
    qk = qk.view(np.float32).reshape(b, t, nh + nkv, hd)  # interleaved-pair RoPE as a complex product
    q, k = qk[:, :, :nh].transpose(0, 2, 1, 3), qk[:, :, nh:].transpose(0, 2, 1, 3)
    v = qkv[:, (nh + nkv) * hd:].reshape(b, t, nkv, hd).transpose(0, 2, 1, 3)
    if cache is not None:
        k, v = cache.append(k, v)
    out = attention(q, k, v, mask)
    h = h + mm(out.transpose(0, 2, 1, 3).reshape(b * t, nh * hd), blk.wo)
    gu = mm(norm(h, blk.mlp_norm, ps.eps), blk.wgu)
    gate = gu[:, :ps.ffn_dim]
    act = np.tanh(gate * 0.5)  # silu(g) = g · sigmoid(g) = g · (1 + tanh(g / 2)) / 2, without overflow
    act += 1.0
    act *= gate
    act *= 0.5
    act *= gu[:, ps.ffn_dim:]
    return h + mm(act, blk.wd)


def run_blocks(ps, x: np.ndarray, positions: np.ndarray, mask: np.ndarray | None,
               caches: list[KVCache] | None) -> np.ndarray:
    """:func:`fastblt.model.packed.run_blocks`: x [B, T, dim] → [B, T, dim]."""
    b, t, d = x.shape
    rope = ps.rope[positions][:, :, None]
    h = x.reshape(b * t, d)
    for i, blk in enumerate(ps.blocks):
        h = block(ps, blk, h, b, t, rope, mask, caches[i] if caches is not None else None)
    return h.reshape(b, t, d)


def cross_kv(ps, kv: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`fastblt.model.packed.cross_kv`: latent vectors [B, M, dim] → per layer (k, v) [B, H, M, hd]."""
    b, m, d = kv.shape
    rows = kv.reshape(b * m, d)
    out = []
    for cr in ps.cross:
        kvp = mm(norm(rows, cr.k_norm, ps.eps), cr.wkv)
        out.append((kvp[:, :d].reshape(b, m, ps.n_heads, -1).transpose(0, 2, 1, 3),
                    kvp[:, d:].reshape(b, m, ps.n_heads, -1).transpose(0, 2, 1, 3)))
    return out


def run_decoder(ps, h: np.ndarray, positions: np.ndarray, self_mask: np.ndarray | None,
                kv: list[tuple[np.ndarray, np.ndarray]], cross_mask: np.ndarray | None,
                caches: list[KVCache] | None, double_residual: bool, final_norm: np.ndarray) -> np.ndarray:
    """:func:`fastblt.model.packed.run_decoder`: rows h [B, T, dim] → [B, T, dim] after the final norm."""
    b, t, d = h.shape
    rope = ps.rope[positions][:, :, None]
    rows = h.reshape(b * t, d)
    for i, blk in enumerate(ps.blocks):
        if i < len(ps.cross):
            cr = ps.cross[i]
            q = mm(norm(rows, cr.q_norm, ps.eps), cr.wq).reshape(b, t, ps.n_heads, -1).transpose(0, 2, 1, 3)
            a = mm(attention(q, kv[i][0], kv[i][1], cross_mask).transpose(0, 2, 1, 3).reshape(b * t, d), cr.wo)
            out = rows + a  # the module's order: (h + attn) + h with the released double residual
            rows = out + rows if double_residual else out
        rows = block(ps, blk, rows, b, t, rope, self_mask, caches[i] if caches is not None else None)
    return norm(rows, final_norm, ps.eps).reshape(b, t, d)


def pool_one(ps, h: np.ndarray, k: int, double_residual: bool) -> np.ndarray:
    """:func:`fastblt.model.packed.pool_one`: one patch's byte states h [L, d] → its vector [1, 1, k·d]:
    max-pool, k queries, one cross-attention over the patch's bytes (ps.cross[0], ps.proj)."""
    cr, (n, d) = ps.cross[0], h.shape
    q = (h.max(0, keepdims=True) @ ps.proj).reshape(k, d)
    qh = (norm(q, cr.q_norm, ps.eps) @ cr.wq).reshape(1, k, ps.n_heads, -1).transpose(0, 2, 1, 3)
    kv = mm(norm(h, cr.k_norm, ps.eps), cr.wkv)
    kh = kv[:, :d].reshape(1, n, ps.n_heads, -1).transpose(0, 2, 1, 3)
    vh = kv[:, d:].reshape(1, n, ps.n_heads, -1).transpose(0, 2, 1, 3)
    out = q + attention(qh, kh, vh, None).transpose(0, 2, 1, 3).reshape(k, d) @ cr.wo
    if double_residual:
        out = out + q
    return out.reshape(1, 1, k * d)


def logits(ps, h: np.ndarray, final_norm: np.ndarray | None) -> np.ndarray:
    """:func:`fastblt.model.packed.logits`: hidden [B, T, dim] → float32 logits [B, T, 260]."""
    b, t, d = h.shape
    rows = h.reshape(b * t, d)
    if final_norm is not None:
        rows = norm(rows, final_norm, ps.eps)
    return mm(rows, ps.head).reshape(b, t, -1)
