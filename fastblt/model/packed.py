"""Decode-time weight layout: fused, pre-transposed projection matrices for cached generation
(issue 11; the math is BLT arXiv 2412.09871 §3 unchanged).

Decoding one byte at batch 1 runs a few dozen tiny matmuls ([1, 128] × [128, 512] on the shipped
model), whose cost is dispatch and streaming the weights from memory, not FLOPs. Packing cuts the
number of kernels per block from ten (seven projections + two norms + the SwiGLU product) to four
matmuls plus the elementwise work:

    wqkv [dim, (H + 2·H_kv)·hd]   q, k and v projections in one matmul (RoPE on q and k in one product)
    wo   [H·hd, dim]
    wgu  [dim, 2·ffn]             SwiGLU gate and up in one matmul
    wd   [ffn, dim]

each stored transposed and contiguous (``x @ w`` with ``torch.mm``, the fastest layout for one
row). Norm weights are used as they are (:func:`~fastblt.model.layers.rms_norm`), so each layer computes
the module path's formula; only the matmul blocking differs (float reassociation, ≤ 1e-5 here).

:func:`decode_weights` builds the packs of a :class:`~fastblt.model.blt.BLT` once and caches them on
the model, rebuilt when any parameter changes (the tensor itself, its storage, dtype, device or
in-place version).
The stacks' ``forward(..., packed=...)`` run :func:`run_blocks` / :func:`cross_attend` instead of
their modules; only :class:`~fastblt.generation.state.BLTState` passes packs (training and the
uncached reference run the modules).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from . import npdecode
from .layers import KVCache, apply_rope, fix_empty_rows, rms_norm

NUMPY = True  # float32 CPU packs run through fastblt.model.npdecode (False: the torch code below everywhere;
# read at each call, so it can be switched without repacking; a model compiled for decoding,
# runtime.compile_for_decoding, is packed without the NumPy twin and always runs the torch code)


@dataclass(frozen=True)
class PackedBlock:
    """One transformer block's projections (see the module docstring for the shapes) and norm weights [dim]."""
    attn_norm: torch.Tensor
    wqkv: torch.Tensor
    wo: torch.Tensor
    mlp_norm: torch.Tensor
    wgu: torch.Tensor
    wd: torch.Tensor


@dataclass(frozen=True)
class PackedCross:
    """One decoder cross-attention layer: wq, wo [dim, dim]; wkv [dim, 2·dim] (keys then values of the
    latent vectors); q_norm, k_norm [dim]."""
    q_norm: torch.Tensor
    wq: torch.Tensor
    wo: torch.Tensor
    k_norm: torch.Tensor
    wkv: torch.Tensor


@dataclass(frozen=True)
class PackedStack:
    """A stack's blocks, its RoPE table (complex64 [positions, hd / 2]) and shape constants.

    head: the output projection [dim, 260] transposed (entropy model, local decoder), else None;
    cross: the decoder's cross-attention layers, or the encoder's pooling cross-attention (BLT §3.2.2);
    proj: the stack's patch projection transposed — encoder: max-pool → k pooling queries
    [d_local, k·d_local]; decoder: latent → k cross-attention vectors [d_global, k·d_local]; np: the same pack as
    NumPy views, set for float32 CPU weights (the functions below then run :mod:`~fastblt.model.npdecode`)."""
    blocks: tuple[PackedBlock, ...]
    rope: torch.Tensor
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    eps: float
    head: torch.Tensor | None = None
    cross: tuple[PackedCross, ...] = ()
    proj: torch.Tensor | None = None
    np: PackedStack | None = None


@dataclass(frozen=True)
class DecodeWeights:
    """The packs of a BLT's four components (entropy None for a model patched without one)."""
    entropy: PackedStack | None
    encoder: PackedStack
    global_: PackedStack
    decoder: PackedStack


def _t(*ws: torch.Tensor) -> torch.Tensor:
    """nn.Linear weights [out_i, in] stacked on the output axis and transposed: [in, Σ out_i], contiguous
    (one strided copy per weight, no intermediate)."""
    out = ws[0].new_empty(ws[0].shape[1], sum(w.shape[0] for w in ws))
    a = 0
    for w in ws:
        out[:, a:a + w.shape[0]].copy_(w.t())
        a += w.shape[0]
    return out


def pack_stack(stack, head: torch.nn.Linear | None = None, cross=(),
               proj: torch.nn.Linear | None = None, numpy: bool = True) -> PackedStack:
    """Pack a :class:`~fastblt.model.blt.Stack` (and optionally its output head, cross-attention
    layers and patch projection)."""
    cfg = stack.cfg
    blocks = []
    for layer in stack.layers:
        sa, mlp = layer.self_attn, layer.mlp
        blocks.append(PackedBlock(layer.input_layernorm.weight.detach(),
                                  _t(sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight), _t(sa.o_proj.weight),
                                  layer.post_attention_layernorm.weight.detach(),
                                  _t(mlp.gate_proj.weight, mlp.up_proj.weight), _t(mlp.down_proj.weight)))
    crosses = tuple(PackedCross(x.q_norm.weight.detach(), _t(x.q_proj.weight), _t(x.o_proj.weight),
                                x.k_norm.weight.detach(), _t(x.k_proj.weight, x.v_proj.weight)) for x in cross)
    w = stack.layers[0].self_attn.q_proj.weight
    rope = stack.rope.table(w.device)
    ps = PackedStack(tuple(blocks), rope, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.norm_eps,
                     _t(head.weight) if head is not None else None, crosses,
                     _t(proj.weight) if proj is not None else None)
    return replace(ps, np=_numpy_twin(ps) if numpy else None)


def _numpy_twin(ps: PackedStack) -> PackedStack | None:
    """The pack with every tensor as a NumPy view (float32 CPU packs), else None."""
    w = ps.blocks[0].wqkv
    if w.device.type != "cpu" or w.dtype != torch.float32:
        return None

    def view(obj):
        return replace(obj, **{f.name: getattr(obj, f.name).numpy() for f in fields(obj)})

    return replace(ps, blocks=tuple(view(b) for b in ps.blocks), cross=tuple(view(c) for c in ps.cross),
                   rope=ps.rope.numpy(), head=ps.head.numpy() if ps.head is not None else None,
                   proj=ps.proj.numpy() if ps.proj is not None else None)


def uses_numpy(ps: PackedStack) -> bool:
    """Whether calls on this pack run :mod:`~fastblt.model.npdecode` (a float32 CPU pack while :data:`NUMPY`)."""
    return NUMPY and ps.np is not None


def _key(model) -> tuple:
    return (getattr(model, "decode_with_numpy", True),) + tuple(
        (id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


_blas_threads: int | None = None


def match_blas_threads() -> None:
    """Give NumPy's BLAS (OpenBLAS, which the NumPy twin's matmuls run on) torch's CPU thread count,
    so that ``torch.set_num_threads(n)`` / ``--threads`` / ``OMP_NUM_THREADS`` govern the whole
    decode step (threadpoolctl; checked once per generation call)."""
    global _blas_threads
    n = torch.get_num_threads()
    if n != _blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n, user_api="blas")
        _blas_threads = n


def _fingerprint(model) -> torch.Tensor:
    """Eight or so evenly strided elements of every parameter, float32 [~8 · n_params]. In-place writes
    through ``.data`` (EMA, weight averaging, hand-written updates) leave a tensor's version counter
    unchanged, so the cache also compares these values: a change that touches a whole tensor (the
    usual case) is seen; one that touches only elements between the samples is not (then call
    :func:`forget`)."""
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1)[::max(1, p.numel() // 8)].float() for p in model.parameters()])


def forget(model) -> None:
    """Drop ``model``'s cached packs: the next generation rebuilds them (needed only after writing a
    few elements of a weight through ``.data``; every other change is detected)."""
    if hasattr(model, "_decode_weights"):
        object.__delattr__(model, "_decode_weights")


def decode_weights(model) -> DecodeWeights:
    """The packs of ``model`` (a BLT), built on first use and cached on the model until a parameter
    changes (version counter, storage, dtype, device, or sampled values: :func:`_fingerprint`). Cost:
one copy of the stacks' projection weights (the hash tables are not copied).
    Also matches NumPy's BLAS threads to torch's (:func:`match_blas_threads`)."""
    match_blas_threads()
    key, values = _key(model), _fingerprint(model)
    cached = getattr(model, "_decode_weights", None)
    if cached is not None and cached[0] == key and torch.equal(cached[2], values):
        return cached[1]
    np_ = key[0]
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, usable in and out of inference mode
        dw = DecodeWeights(
            pack_stack(model.patcher, model.patcher.lm_head, numpy=np_) if model.patcher is not None else None,
            pack_stack(model.local_encoder, cross=model.local_encoder.cross_attn_layers[-1:],
                       proj=model.local_encoder.patch_embedding_projection, numpy=np_),
            pack_stack(model.global_transformer, numpy=np_),
            pack_stack(model.local_decoder, model.lm_head, model.local_decoder.cross_attn_layers,
                       model.local_decoder.patch_embedding_projection, numpy=np_))
    object.__setattr__(model, "_decode_weights", (key, dw, values))  # not a submodule, not in state_dict
    return dw


def run_blocks(ps: PackedStack, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
               caches: list[KVCache] | None = None) -> torch.Tensor:
    """Every block of the stack on x [B, T, dim] at ``positions`` [B, T] (mask and caches as
    :meth:`~fastblt.model.blt.Stack.run_layers`). Returns [B, T, dim]."""
    if uses_numpy(ps):
        return torch.from_numpy(npdecode.run_blocks(ps.np, as_numpy(x), as_numpy(positions), as_numpy(mask), caches))
    b, t, d = x.shape
    rope = ps.rope[positions][:, :, None]  # [B, T, 1, hd / 2]
    h = x.reshape(b * t, d)
    for i, blk in enumerate(ps.blocks):
        h = block(ps, blk, h, b, t, rope, mask, caches[i] if caches is not None else None)
    return h.view(b, t, d)


def block(ps: PackedStack, blk: PackedBlock, h: torch.Tensor, b: int, t: int, rope: torch.Tensor,
          mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
    """One pre-norm block (:class:`~fastblt.model.layers.Block`) on rows h [B·T, dim]."""
    nh, nkv, hd = ps.n_heads, ps.n_kv_heads, ps.head_dim
    qkv = torch.mm(rms_norm(h, blk.attn_norm, ps.eps), blk.wqkv)
    qk = apply_rope(qkv[:, :(nh + nkv) * hd].view(b, t, nh + nkv, hd), rope)  # q and k heads in one product
    q, k = qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2)
    v = qkv[:, (nh + nkv) * hd:].view(b, t, nkv, hd).transpose(1, 2)
    if cache is not None:
        k, v = cache.append(k, v)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=nkv != nh)
    h = h + torch.mm(out.transpose(1, 2).reshape(b * t, nh * hd), blk.wo)
    gu = torch.mm(rms_norm(h, blk.mlp_norm, ps.eps), blk.wgu)
    return h + torch.mm(F.silu(gu[:, :ps.ffn_dim]) * gu[:, ps.ffn_dim:], blk.wd)


def cross_kv(ps: PackedStack, kv: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each cross-attention layer's keys and values [B, H, M, hd] of latent vectors kv [B, M, dim]
    (:meth:`~fastblt.model.blt.LocalDecoder.cross_kv`)."""
    if uses_numpy(ps):
        return [(torch.from_numpy(k), torch.from_numpy(v)) for k, v in npdecode.cross_kv(ps.np, as_numpy(kv))]
    b, m, d = kv.shape
    rows = kv.reshape(b * m, d)
    out = []
    for cr in ps.cross:
        kvp = torch.mm(rms_norm(rows, cr.k_norm, ps.eps), cr.wkv)
        out.append((kvp[:, :d].view(b, m, ps.n_heads, -1).transpose(1, 2),
                    kvp[:, d:].view(b, m, ps.n_heads, -1).transpose(1, 2)))
    return out


def cross_attend(ps: PackedStack, cr: PackedCross, h: torch.Tensor, b: int, t: int,
                 kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                 double_residual: bool) -> torch.Tensor:
    """A decoder cross-attention layer (:class:`~fastblt.model.layers.CrossAttention`) on rows h [B·T, dim]
    over projected latents kv (mask: no fully masked row, :func:`run_decoder` sees to it); returns the
    new rows (the residual added once, or twice when ``double_residual``)."""
    d = h.shape[1]
    q = torch.mm(rms_norm(h, cr.q_norm, ps.eps), cr.wq).view(b, t, ps.n_heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
    a = torch.mm(out.transpose(1, 2).reshape(b * t, d), cr.wo)
    out = h + a  # the module's order: (h + attn) + h with the released double residual
    return out + h if double_residual else out


def run_decoder(ps: PackedStack, h: torch.Tensor, positions: torch.Tensor, self_mask: torch.Tensor | None,
                kv: list[tuple[torch.Tensor, torch.Tensor]], cross_mask: torch.Tensor | None,
                caches: list[KVCache] | None, double_residual: bool, final_norm: torch.Tensor) -> torch.Tensor:
    """The local decoder's layers (:meth:`~fastblt.model.blt.LocalDecoder.forward`) on rows h [B, T, dim]:
    layer i cross-attends kv[i] (the projected latents, :func:`cross_kv`) when it has a
    cross-attention layer, then runs its block. Returns [B, T, dim] after the final RMSNorm (weight
    ``final_norm`` [dim])."""
    if cross_mask is not None:  # once for every layer
        cross_mask = fix_empty_rows(cross_mask)
    if uses_numpy(ps):
        out = npdecode.run_decoder(ps.np, as_numpy(h), as_numpy(positions), as_numpy(self_mask),
                                   [(as_numpy(k), as_numpy(v)) for k, v in kv], as_numpy(cross_mask), caches, double_residual,
                                   as_numpy(final_norm))
        return torch.from_numpy(out)
    b, t, d = h.shape
    rope = ps.rope[positions][:, :, None]
    rows = h.reshape(b * t, d)
    for i, blk in enumerate(ps.blocks):
        if i < len(ps.cross):
            rows = cross_attend(ps, ps.cross[i], rows, b, t, kv[i], cross_mask, double_residual)
        rows = block(ps, blk, rows, b, t, rope, self_mask, caches[i] if caches is not None else None)
    return rms_norm(rows, final_norm, ps.eps).view(b, t, d)


def pool_one(encoder, ps: PackedStack, h: torch.Tensor) -> torch.Tensor:
    """The patch vector of one patch from its byte states h [1, L, d_local] → [1, 1, k·d_local]
    (:meth:`~fastblt.model.blt.LocalEncoder.pool` of a single patch, BLT §3.2.2)."""
    if not uses_numpy(ps):
        return encoder.pool(h, torch.zeros(h.shape[:2], dtype=torch.long, device=h.device), 1)
    return torch.from_numpy(npdecode.pool_one(ps.np, as_numpy(h)[0], encoder.k, encoder.double_residual))


def latent_vectors(decoder, ps: PackedStack, latents: torch.Tensor) -> torch.Tensor:
    """:meth:`~fastblt.model.blt.LocalDecoder.latent_vectors`: latents [B, P, d_global] → [B, P·k, d_local]."""
    if not uses_numpy(ps):
        return decoder.latent_vectors(latents)
    b, p, d = latents.shape
    return torch.from_numpy((as_numpy(latents).reshape(b * p, d) @ ps.np.proj).reshape(b, -1, decoder.cfg.dim))


def logits(ps: PackedStack, h: torch.Tensor, final_norm: torch.Tensor | None) -> torch.Tensor:
    """Output head on hidden states h [B, T, dim]: RMSNorm with ``final_norm`` [dim] (None: h is
    already normalised) then the head → float32 logits [B, T, 260]."""
    if uses_numpy(ps):
        return torch.from_numpy(npdecode.logits(ps.np, as_numpy(h), as_numpy(final_norm)))
    b, t, d = h.shape
    rows = h.reshape(b * t, d)
    if final_norm is not None:
        rows = rms_norm(rows, final_norm, ps.eps)
    return torch.mm(rows, ps.head).view(b, t, -1).float()


def as_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    """A CPU tensor as a NumPy view (None stays None); a tensor that requires grad is detached: packs
    serve generation only, no gradient flows through them."""
    if t is None:
        return None
    return t.detach().numpy() if t.requires_grad else t.numpy()
