"""Transformer building blocks shared by every BLT component (Llama-3 conventions,
BLT arXiv 2412.09871 §4.7).

RMSNorm, interleaved-pair RoPE (the official BLT convention) with tables built once per stack,
SwiGLU, self-attention with an optional static KV cache (a ring buffer for sliding-window layers),
and the patch cross-attention of BLT §3.2–3.3. Attention masks are boolean (True = may attend) of
shape [B or 1, 1, Q, K].

These modules are what training and the uncached reference run: inside a block, projections are
``F.linear`` on the weights and sub-modules are entered through ``.forward`` (forward hooks fire on
blocks and larger modules, not on a block's norms and linears). Cached generation runs the same
math on fused decode-time weights instead (:mod:`fastblt.model.packed`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import StackConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x [..., dim] computed in float32, scaled by ``weight`` [dim]; returns x's dtype."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:  # one fused kernel, same formula
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, scaled by a learned weight (no bias): :func:`rms_norm`."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for interleaved-pair RoPE.

    positions: LongTensor [B, T] (absolute positions). Returns two tensors [B, 1, T, head_dim / 2].
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions[..., None].float() * inv_freq
    return freqs.cos().to(dtype)[:, None], freqs.sin().to(dtype)[:, None]


class RopeTable:
    """Rotations e^{i·θ_j·p} of positions p = 0 .. size − 1 as complex64 [size, head_dim / 2], built once
    per device and indexed per call: ``freqs.real`` / ``freqs.imag`` equal :func:`rope_cos_sin` in float32.

    ``size`` is the owner's longest sequence (``BLTConfig.max_seq_len`` plus a margin); a larger
    position raises IndexError.
    """

    def __init__(self, head_dim: int, theta: float, size: int):
        self.head_dim, self.theta, self.size = head_dim, theta, size
        self._tables: dict[torch.device, torch.Tensor] = {}

    def table(self, device: torch.device) -> torch.Tensor:
        """The whole table on ``device``: complex64 [size, head_dim / 2] (built on first use)."""
        table = self._tables.get(device)
        if table is None:
            cos, sin = rope_cos_sin(torch.arange(self.size, device=device)[None], self.head_dim,
                                    self.theta, torch.float32)
            table = self._tables[device] = torch.complex(cos[0, 0], sin[0, 0])
        return table

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        """positions LongTensor [B, T] → complex64 rotations [B, 1, T, head_dim / 2]."""
        return self.table(positions.device)[positions][:, None]


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x [B, H, T, D] by the position angle: the pair as a
    complex number times freqs [B or 1, 1, T, D / 2] (:class:`RopeTable`), computed in float32."""
    if torch.compiler.is_compiling():  # inductor generates no code for complex ops: the same product in reals
        x1, x2, cos, sin = x[..., 0::2].float(), x[..., 1::2].float(), freqs.real, freqs.imag
        return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2).to(x.dtype)
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)


class KVCache:
    """Static key/value cache of one self-attention layer (gpt-fast style), allocated on the first
    append for that call's batch size, head count, dtype and device.

    Full-attention layers (``window`` None) keep every position in one buffer of ``capacity``
    positions (default: the first call's length, at least 64; doubled when a call needs more —
    give the expected length to allocate once).

    Sliding-window layers keep a ring of R = window + slack slots: position p lives in slot p mod R,
    mirrored in slot p mod R + R, so that any run of ≤ R consecutive positions is one contiguous
    slice in position order. Memory stays flat however long the sequence grows, and each call
    returns only the keys its queries can see, in order: positions ``first_key(t)`` .. length − 1.
    A call of t ≤ slack new positions writes them into the ring and reads one slice; a longer call
    (a prefill) reads the previous window − 1 positions, appends the new ones, and keeps the last R.
    Attention over these keys is the full-cache computation restricted to the keys its mask admits.

    ``append`` takes torch tensors, or NumPy arrays (float32, CPU: :mod:`fastblt.model.npdecode`) and
    then returns NumPy views of the same buffers.

    ``length``: positions held (the next append starts there). ``crop(n)`` rolls back to the first n
    positions. A ring can roll back only while positions n − window + 1 .. n − 1 are still held:
    at most ``slack`` positions behind the furthest write (ValueError otherwise).
    """

    def __init__(self, window: int | None = None, capacity: int | None = None, slack: int | None = None):
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.window = window
        self.slack = (window if slack is None else slack) if window is not None else 0
        if window is not None and self.slack < 1:
            raise ValueError(f"slack must be >= 1, got {self.slack}")
        self.ring = window + self.slack if window is not None else None  # R
        self.capacity = capacity
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self._np: tuple[np.ndarray, np.ndarray] | None = None  # NumPy views of k, v (same memory)
        self.length = 0
        self.hi = -1  # furthest position ever written

    def first_key(self, t: int) -> int:
        """Absolute position of the first key that the next ``append`` of t positions returns."""
        return 0 if self.window is None else max(0, self.length - self.window + 1)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add keys/values [B, H_kv, t, D] at positions length .. length + t − 1.

        Returns keys and values [B, H_kv, K, D] of positions first_key(t) .. length + t − 1 (the
        cache's own storage when possible: read them before the next append).
        """
        t = k.shape[2]
        if self.window is None:
            return self._append_full(k, v, t)
        lo, end = self.length, self.length + t  # new positions lo .. end − 1
        a, r = self.first_key(t), self.ring
        if self.k is None:
            self._alloc(k, (k.shape[0], k.shape[1], 2 * r, k.shape[3]))
        kb, vb = self._buffers(k)
        if t <= self.slack:
            self._write(kb, vb, k, v, lo)
            s = a % r
            out = kb[:, :, s:s + end - a], vb[:, :, s:s + end - a]
        else:
            s = a % r
            cat = np.concatenate if isinstance(k, np.ndarray) else torch.cat
            out = cat([kb[:, :, s:s + lo - a], k], 2), cat([vb[:, :, s:s + lo - a], v], 2)
            m = min(t, r)
            self._write(kb, vb, k[:, :, t - m:], v[:, :, t - m:], end - m)
        self.length, self.hi = end, max(self.hi, end - 1)
        return out

    def _alloc(self, like, shape: tuple[int, ...]) -> None:
        """Zero buffers of ``shape`` with ``like``'s dtype and device (float32 CPU for NumPy arrays)."""
        if isinstance(like, np.ndarray):
            self.k, self.v = torch.zeros(shape), torch.zeros(shape)
        else:
            self.k, self.v = like.new_zeros(shape), like.new_zeros(shape)
        self._np = None

    def _buffers(self, like):
        """(k, v) buffers as torch tensors, or as NumPy views when ``like`` is a NumPy array."""
        if not isinstance(like, np.ndarray):
            return self.k, self.v
        if self._np is None:
            self._np = (self.k.numpy(), self.v.numpy())
        return self._np

    def _write(self, kb, vb, k, v, p0: int) -> None:
        """Store m ≤ R consecutive positions p0 .. p0 + m − 1 in their slots and mirror slots."""
        r, m = self.ring, k.shape[2]
        s = p0 % r
        for buf, x in ((kb, k), (vb, v)):
            buf[:, :, s:s + m] = x
            if s + m <= r:
                buf[:, :, s + r:s + r + m] = x
            else:  # the run crosses slot R: its head is mirrored up, its tail down
                buf[:, :, s + r:] = x[:, :, :r - s]
                buf[:, :, :s + m - r] = x[:, :, r - s:]

    def _append_full(self, k: torch.Tensor, v: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + t
        if self.k is None or end > self.k.shape[2]:
            cap = max(self.capacity or 0, 64, 2 * t) if self.k is None else max(2 * self.k.shape[2], end)
            old = (self.k, self.v)
            self._alloc(k, (k.shape[0], k.shape[1], cap, k.shape[3]))
            if old[0] is not None:
                self.k[:, :, :self.length] = old[0][:, :, :self.length]
                self.v[:, :, :self.length] = old[1][:, :, :self.length]
        kb, vb = self._buffers(k)
        kb[:, :, self.length:end] = k
        vb[:, :, self.length:end] = v
        self.length, self.hi = end, max(self.hi, end - 1)
        return kb[:, :, :end], vb[:, :, :end]

    def crop(self, n: int) -> None:
        """Keep positions 0 .. n − 1. Raises ValueError for n outside [0, length] or, for a ring,
        when positions the next query needs were overwritten (a rollback of more than ``slack``)."""
        if n < 0 or n > self.length:
            raise ValueError(f"cannot crop a cache of {self.length} positions to {n}")
        if self.window is not None and max(0, n - self.window + 1) <= self.hi - self.ring:
            raise ValueError(f"cannot roll back a sliding-window cache from position {self.hi} to {n}: its ring of "
                             f"{self.ring} slots (window {self.window} + slack {self.slack}) no longer holds "
                             f"positions {max(0, n - self.window + 1)}..{n - 1}; drafts and blocks must stay "
                             f"within the slack")
        self.length = n


def fix_empty_rows(mask: torch.Tensor) -> torch.Tensor:
    """Let fully masked query rows attend everywhere (their output is never read), avoiding NaNs."""
    empty = ~mask.any(-1, keepdim=True)
    return mask | empty if bool(empty.any()) else mask


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              fix_empty: bool = True) -> torch.Tensor:
    """Scaled dot-product attention with grouped KV heads. q [B,H,Q,D], k/v [B,Hkv,K,D], mask bool
    [B or 1, 1, Q, K] or None (every key visible). fix_empty: guard against fully masked rows
    (callers whose masks always admit a key, e.g. causal masks, skip the check)."""
    if mask is not None and fix_empty:
        mask = fix_empty_rows(mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


class SelfAttention(nn.Module):
    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim, self.theta = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rope_theta
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, dim]; rope: complex rotations [B or 1, 1, T, head_dim / 2] (:class:`RopeTable`); mask
        bool [B or 1, 1, T, K] over the keys this call sees (with a cache: positions
        ``cache.first_key(T)`` .. end) or None. Every query row must admit at least one key (the
        stacks fix fully masked rows once per call, :func:`fix_empty_rows`)."""
        b, t, _ = x.shape
        q = F.linear(x, self.q_proj.weight).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = F.linear(x, self.k_proj.weight).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = F.linear(x, self.v_proj.weight).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if cache is not None:
            k, v = cache.append(k, v)
        out = attention(q, k, v, mask, fix_empty=False)
        return F.linear(out.transpose(1, 2).reshape(b, t, -1), self.o_proj.weight)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(F.linear(x, self.gate_proj.weight)) * F.linear(x, self.up_proj.weight),
                        self.down_proj.weight)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.mlp = SwiGLU(cfg.dim, cfg.ffn_dim)
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, rope, mask, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn.forward(self.input_layernorm.forward(x), rope, mask, cache)
        return x + self.mlp.forward(self.post_attention_layernorm.forward(x))


class CrossAttention(nn.Module):
    """Patch cross-attention (BLT §3.2.2, §3.3.1): RMSNorm on queries and on keys/values, no RoPE,
    no FFN. Returns the residual-added output ``x + attn`` (the caller adds x again when the
    released double residual is on)."""

    def __init__(self, dim: int, n_heads: int, eps: float = 1e-5):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(dim, eps)
        self.k_norm = RMSNorm(dim, eps)

    def project_kv(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, H, M, head_dim] of the vectors kv [B, M, dim] (normalised, projected).
        Cached generation projects each latent once and passes the pair to :meth:`forward`."""
        b = kv.shape[0]
        kvn = self.k_norm.forward(kv)
        k = F.linear(kvn, self.k_proj.weight).view(b, -1, self.n_heads, self.head_dim).transpose(1, 2)
        v = F.linear(kvn, self.v_proj.weight).view(b, -1, self.n_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x: torch.Tensor, kv: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, dim] queries; kv [B, M, dim] vectors, or their :meth:`project_kv` pair; mask bool
        [B or 1, 1, T, M] or None. Returns x + attention output, [B, T, dim]."""
        b, t, _ = x.shape
        q = F.linear(self.q_norm.forward(x), self.q_proj.weight).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.project_kv(kv) if isinstance(kv, torch.Tensor) else kv
        out = attention(q, k, v, mask)
        return x + F.linear(out.transpose(1, 2).reshape(b, t, -1), self.o_proj.weight)


def causal_window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean mask [B, 1, Q, K]: key j visible to query i iff k_pos[j] <= q_pos[i] (and within the
    window: q_pos - k_pos < window). q_pos [B, Q], k_pos [B, K] absolute positions."""
    diff = q_pos[:, :, None] - k_pos[:, None, :]
    m = diff >= 0
    if window is not None:
        m = m & (diff < window)
    return m[:, None]
