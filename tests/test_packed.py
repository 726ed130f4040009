"""Decode-time packs (fastblt/model/packed.py) and their NumPy twin (fastblt/model/npdecode.py): each
stack computes what its modules compute, in both backends; generation gives the same bytes with
either; packs follow weight changes; the NumPy pieces of a decode step (KV cache, greedy argmax,
entropies, embedding gather) equal their torch versions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastblt.model.packed as PK
from fastblt.generation import BLTState, generate
from fastblt.generation.sampling import NonFiniteLogitsError, Sampler, SamplingParams
from fastblt.model.layers import KVCache
from fastblt.patching.patches import entropies_from_logits

from helpers import random_ids, tiny_model

torch.set_num_threads(1)


@pytest.fixture(params=["numpy", "torch"])
def backend(request, monkeypatch):
    """Run a test with the NumPy twin (the CPU float32 default) and with the torch packs."""
    monkeypatch.setattr(PK, "NUMPY", request.param == "numpy")
    return request.param


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5) -> bool:
    """Equal up to float32 reassociation: tol relative to the largest magnitude (logits reach ~40 here)."""
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("t", [1, 7])
def test_packed_stacks_equal_their_modules(backend, t):
    """Entropy model, encoder, global transformer and decoder (with caches, after a prefix) through the
    packs vs. the module path, on the same inputs."""
    m = tiny_model(diffusion_block_size=4)
    dw = PK.decode_weights(m)
    assert PK.uses_numpy(dw.encoder) == (backend == "numpy")
    g = torch.Generator().manual_seed(0)
    ids = random_ids(19 + t)  # BOS + 19 + t bytes
    with torch.no_grad():
        for name, pack in (("patcher", dw.entropy), ("local_encoder", dw.encoder), ("global_transformer", dw.global_)):
            stack = getattr(m, name)
            dim = {"local_encoder": m.cfg.encoder.dim, "global_transformer": m.cfg.global_input_dim}.get(name)
            x = ids if dim is None else torch.randn(1, 20 + t, dim, generator=g)
            pos = torch.arange(20 + t)[None]
            outs = []
            for packed in (None, pack):  # a prefix of 20, then t more through the caches
                caches = stack.new_caches()
                for sl in (slice(0, 20), slice(20, None)):
                    out = stack(x[:, sl], pos[:, sl], caches, packed=packed)
                outs.append(out)
            assert _close(outs[0], outs[1]), name
        dec = m.local_decoder
        h = torch.randn(1, 20 + t, dec.cfg.dim, generator=g)
        latents = torch.randn(1, 3, m.cfg.global_.dim, generator=g)
        kv = dec.latent_vectors(latents)
        assert _close(PK.latent_vectors(dec, dw.decoder, latents), kv)
        row_latent = torch.tensor([[min(i // 8, 2) for i in range(20 + t)]])
        from fastblt.model.masks import latent_cross_mask
        cross = latent_cross_mask(row_latent, 3, m.cfg.cross_attn_k)
        pos = torch.arange(20 + t)[None]
        outs = []
        for packed in (None, dw.decoder):
            caches = dec.new_caches()
            pairs = dec.cross_kv(kv, packed)
            dec(h[:, :20], pos[:, :20], None, pairs, cross[..., :20, :], caches, packed=packed)
            out = dec(h[:, 20:], pos[:, 20:], None, pairs, cross[..., 20:, :], caches, packed=packed)
            outs.append(PK.logits(dw.decoder, out, None) if packed is not None else m.lm_head(out))
        assert _close(outs[0], outs[1])
        span = torch.randn(1, 5, m.cfg.encoder.dim, generator=g)
        ref = m.local_encoder.pool(span, torch.zeros(1, 5, dtype=torch.long), 1)
        assert _close(PK.pool_one(m.local_encoder, dw.encoder, span), ref)


@pytest.mark.parametrize("method,kw", [("blt", {}), ("blt-s", {"draft_length": 4}), ("blt-d", {}),
                                       ("blt-dv", {"schedule": "paper"}), ("blt-dv", {"unmask": "confidence"})])
def test_generation_is_the_same_with_either_backend(monkeypatch, method, kw):
    m = tiny_model(diffusion_block_size=4)
    runs = []
    for numpy in (True, False):
        monkeypatch.setattr(PK, "NUMPY", numpy)
        runs.append(generate(m, b"packed weights", method=method, max_new_bytes=60, ignore_eos=True, **kw))
    assert runs[0].bytes == runs[1].bytes
    assert {k: runs[0].stats[k] for k in ("decoder_nfe", "global_nfe", "entropy_nfe")} == \
           {k: runs[1].stats[k] for k in ("decoder_nfe", "global_nfe", "entropy_nfe")}


def test_cached_logits_equal_the_full_forward_with_torch_packs(monkeypatch):
    """The exactness contract on the torch packs too (the NumPy twin is covered by every other test)."""
    monkeypatch.setattr(PK, "NUMPY", False)
    m = tiny_model()
    ids = random_ids(90)
    with torch.no_grad():
        full = m(ids)
        state = BLTState(m)
        rows = [state.extend(ids[0, :30].tolist())] + [state.extend([int(x)]) for x in ids[0, 30:]]
    assert _close(torch.cat(rows, 1), full, 1e-4)


def test_packs_follow_weight_changes():
    """An in-place update (an optimizer step, load_state_dict) or a dtype change rebuilds the packs:
    generation never runs on stale weights."""
    m = tiny_model()
    first = PK.decode_weights(m)
    assert PK.decode_weights(m) is first  # cached while nothing changes
    with torch.no_grad():
        m.local_decoder.layers[0].mlp.down_proj.weight.mul_(1.5)
    assert PK.decode_weights(m) is not first
    ids = random_ids(40)
    with torch.no_grad():
        state = BLTState(m)
        assert _close(state.extend(ids[0].tolist()), m(ids), 1e-4)
    packs = PK.decode_weights(m)
    m.lm_head.weight.data.mul_(-1.0)  # through .data: the version counter does not move, the sampled values do
    assert PK.decode_weights(m) is not packs
    with torch.no_grad():
        assert _close(BLTState(m).extend(ids[0].tolist()), m(ids), 1e-4)
    packs = PK.decode_weights(m)
    PK.forget(m)
    assert PK.decode_weights(m) is not packs
    m.to(torch.bfloat16)
    dw = PK.decode_weights(m)
    assert dw.decoder.blocks[0].wqkv.dtype == torch.bfloat16 and dw.decoder.np is None  # NumPy has no bfloat16


def test_switching_backends_needs_no_repacking(monkeypatch):
    """NUMPY is read per call (the roofline counts FLOPs on the torch packs between timed NumPy runs);
    a model compiled for decoding is packed without the NumPy twin."""
    m = tiny_model()
    dw = PK.decode_weights(m)
    monkeypatch.setattr(PK, "NUMPY", False)
    assert PK.decode_weights(m) is dw and not PK.uses_numpy(dw.encoder)
    monkeypatch.setattr(PK, "NUMPY", True)
    assert PK.uses_numpy(dw.encoder)
    object.__setattr__(m, "decode_with_numpy", False)  # what runtime.compile_for_decoding sets
    assert not PK.uses_numpy(PK.decode_weights(m).encoder)


def test_numpy_kv_cache_equals_the_torch_cache():
    g = torch.Generator().manual_seed(0)
    for window, slack in ((6, 2), (None, None)):
        a, b = KVCache(window, capacity=4, slack=slack), KVCache(window, capacity=4, slack=slack)
        for t in (3, 1, 1, 5, 1, 2, 9, 1):
            k, v = torch.randn(1, 2, t, 4, generator=g), torch.randn(1, 2, t, 4, generator=g)
            ka, va = a.append(k, v)
            kb, vb = b.append(k.numpy(), v.numpy())
            assert isinstance(kb, np.ndarray) and np.array_equal(ka.numpy(), kb) and np.array_equal(va.numpy(), vb)
            if t == 5:
                a.crop(a.length - 2)
                b.crop(b.length - 2)


def test_greedy_pick_in_numpy_equals_the_torch_argmax():
    s = Sampler(SamplingParams(temperature=0.0))
    s_eos = Sampler(SamplingParams(temperature=0.0, ignore_eos=True))
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = torch.randn(1, 260, generator=g)
        logits[0, torch.randint(0, 260, (3,), generator=g)] = logits.max()  # ties: the first one wins in both
        for sampler in (s, s_eos):
            assert sampler.pick(logits) == int(sampler.sample(logits)[0])
    bad = torch.zeros(1, 260)
    bad[0, 7] = float("nan")
    with pytest.raises(NonFiniteLogitsError):
        s.pick(bad)


def test_numpy_entropies_equal_torch():
    logits = torch.randn(3, 11, 260) * 4
    got = entropies_from_logits(logits.numpy())
    assert isinstance(got, np.ndarray) and np.allclose(got, entropies_from_logits(logits).numpy(), atol=1e-5)


def test_compiled_packed_layers_equal_eager():
    """`--compile` runs the torch packs through inductor: a decoder layer (cross-attention with the
    double residual, then a block with a ring cache) compiled == eager. (Inductor once lowered
    ``torch.add(a, h, alpha=2)`` here wrongly; the packs now add in the module's order.)"""
    from fastblt.model.runtime import compiler_problem

    if compiler_problem(torch.device("cpu")) is not None:  # pragma: no cover - CI images have g++
        pytest.fail(f"no compiler: {compiler_problem(torch.device('cpu'))}")
    m = tiny_model(diffusion_block_size=4)
    object.__setattr__(m, "decode_with_numpy", False)
    dw = PK.decode_weights(m)
    ps, dec = dw.decoder, m.local_decoder
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, 12, dec.cfg.dim, generator=g)
    pairs = dec.cross_kv(PK.latent_vectors(dec, ps, torch.randn(1, 2, m.cfg.global_.dim, generator=g)), ps)
    from fastblt.model.masks import latent_cross_mask
    cross = latent_cross_mask(torch.tensor([[i // 6 for i in range(12)]]), 2, m.cfg.cross_attn_k)
    pos = torch.arange(12)[None]

    def layer(h, caches):
        return PK.run_decoder(ps, h, pos, None, pairs, cross, caches, True, dec.norm.weight)

    with torch.no_grad():
        ref = layer(h, dec.new_caches())
        got = torch.compile(layer, dynamic=True)(h, dec.new_caches())
    assert _close(got, ref, 1e-4)


@pytest.mark.parametrize("k,n", [(128, 1024), (256, 1536), (128, 128), (768, 256), (512, 4096)])
def test_chunked_matmul_equals_one_product(k, n):
    """npdecode.mm (row chunks for OpenBLAS's fast path, zero-padded remainders) == x @ w for every
    row count a decode call uses, and returns exactly M rows."""
    from fastblt.model.npdecode import mm

    rng = np.random.default_rng(k + n)
    w = rng.standard_normal((k, n), dtype=np.float32)
    for m in list(range(1, 20)) + [33]:
        x = rng.standard_normal((m, k), dtype=np.float32)
        out = mm(x, w)
        assert out.shape == (m, n) and out.dtype == np.float32
        np.testing.assert_allclose(out, x @ w, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("t,k_len", [(1, 300), (2, 40), (3, 600), (16, 20),  # T·K ≤ SMALL_ATTENTION: NumPy
                                     (9, 520), (16, 600)])  # torch's kernel
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_numpy_attention_equals_torch_on_both_sides_of_the_threshold(t, k_len, masked, kv_heads):
    """npdecode.attention runs few query-key pairs in NumPy and many in torch's kernel: both give
    softmax(q kᵀ / √hd) v as F.scaled_dot_product_attention does (grouped KV heads, a bool mask with
    a key in every row)."""
    import torch.nn.functional as F

    from fastblt.model import npdecode as NP

    g = torch.Generator().manual_seed(t * 1000 + k_len)
    q = torch.randn(1, 4, t, 16, generator=g)
    k, v = torch.randn(1, kv_heads, k_len, 16, generator=g), torch.randn(1, kv_heads, k_len, 16, generator=g)
    mask = None
    if masked:  # a causal band over the last t keys, and a random key dropped per row (the diagonal kept)
        mask = torch.ones(1, 1, t, k_len, dtype=torch.bool).tril(k_len - t)
        mask &= torch.rand(1, 1, t, k_len, generator=g) > 0.2
        mask[..., torch.arange(t), torch.arange(k_len - t, k_len)] = True
    got = NP.attention(q.numpy(), k.numpy(), v.numpy(), None if mask is None else mask.numpy())
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv_heads != 4)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)
