"""Transformer building blocks shared by every BLT component (Llama-3 conventions, BLT §4.7).

RMSNorm, interleaved-pair RoPE (the official BLT convention), SwiGLU, self-attention with an
optional KV cache, and the patch cross-attention of BLT §3.2–3.3. Attention masks are boolean
(True = may attend) of shape [B or 1, 1, Q, K].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import StackConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, scaled by a learned weight (no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for interleaved-pair RoPE.

    positions: LongTensor [B, T] (absolute positions). Returns two tensors [B, 1, T, head_dim / 2].
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions[..., None].float() * inv_freq
    return freqs.cos().to(dtype)[:, None], freqs.sin().to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x [B, H, T, D] by the position angle."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


class KVCache:
    """Growable per-layer key/value cache for one attention module.

    Holds keys and values [B, H_kv, L, D] for the positions seen so far. ``crop(n)`` rolls back to
    the first n positions (used by speculative verification and diffusion blocks).
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        if self.k is None:
            cap = max(64, 2 * t)
            self.k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            self.v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
        elif self.length + t > self.k.shape[2]:
            cap = max(2 * self.k.shape[2], self.length + t)
            nk = self.k.new_empty(self.k.shape[0], self.k.shape[1], cap, self.k.shape[3])
            nv = self.v.new_empty(*nk.shape)
            nk[:, :, : self.length] = self.k[:, :, : self.length]
            nv[:, :, : self.length] = self.v[:, :, : self.length]
            self.k, self.v = nk, nv
        self.k[:, :, self.length : self.length + t] = k
        self.v[:, :, self.length : self.length + t] = v
        self.length += t
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def crop(self, n: int) -> None:
        if n < 0 or n > self.length:
            raise ValueError(f"cannot crop a cache of {self.length} positions to {n}")
        self.length = n


def _fix_empty_rows(mask: torch.Tensor) -> torch.Tensor:
    """Let fully masked query rows attend everywhere (their output is never read), avoiding NaNs."""
    empty = ~mask.any(-1, keepdim=True)
    return mask | empty if bool(empty.any()) else mask


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention with grouped KV heads. q [B,H,Q,D], k/v [B,Hkv,K,D], mask bool."""
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if mask is not None:
        mask = _fix_empty_rows(mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SelfAttention(nn.Module):
    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim, self.theta = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rope_theta
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                cache: KVCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.append(k, v)
        out = attention(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.mlp = SwiGLU(cfg.dim, cfg.ffn_dim)
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, rope, mask, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


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

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(self.q_norm(x)).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        kvn = self.k_norm(kv)
        k = self.k_proj(kvn).view(b, -1, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(kvn).view(b, -1, self.n_heads, self.head_dim).transpose(1, 2)
        out = attention(q, k, v, mask)
        return x + self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def causal_window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean mask [B, 1, Q, K]: key j visible to query i iff k_pos[j] <= q_pos[i] (and within the
    window: q_pos - k_pos < window). q_pos [B, Q], k_pos [B, K] absolute positions."""
    diff = q_pos[:, :, None] - k_pos[:, None, :]
    m = diff >= 0
    if window is not None:
        m = m & (diff < window)
    return m[:, None]
