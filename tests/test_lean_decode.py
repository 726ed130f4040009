"""Lean decoding: static KV caches (ring buffers for sliding-window layers equal the full-cache
computation), RoPE tables and incremental hash n-grams equal the direct formulas, the --compile
fallback, and the roofline's eq. 8 accounting."""
from __future__ import annotations

import math
import random

import pytest
import torch

import fastblt
from fastblt.config import BOS_ID
from fastblt.generation import BLTState, generate
from fastblt.generation.api import prompt_ids
from fastblt.model.layers import KVCache, RopeTable, apply_rope, attention, causal_window_mask, rope_cos_sin

torch.set_num_threads(1)


def _reference(keys: torch.Tensor, vals: torch.Tensor, q: torch.Tensor, lo: int, window: int | None) -> torch.Tensor:
    """Attention of queries at positions lo .. lo + T − 1 over the full key list 0 .. lo + T − 1."""
    t, n = q.shape[2], keys.shape[2]
    mask = causal_window_mask(torch.arange(lo, lo + t)[None], torch.arange(n)[None], window)
    return attention(q, keys, vals, mask)


@pytest.mark.parametrize("window,slack", [(8, 1), (8, 3), (5, 8), (None, None)])
def test_ring_cache_matches_the_full_cache_under_appends_and_rollbacks(window, slack):
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    cache = KVCache(window, capacity=4, slack=slack)
    keys = torch.empty(1, 2, 0, 4)
    vals = torch.empty(1, 2, 0, 4)
    rolled = 0
    for step in range(300):
        if step and rng.random() < 0.3:  # roll back as far as the ring allows
            back = rng.randint(0, slack if slack is not None else 20)
            n = max(0, cache.length - back, cache.hi - (slack or 0))
            cache.crop(n)
            keys, vals = keys[:, :, :n], vals[:, :, :n]
            rolled += 1
        t = rng.choice([1, 1, 1, 2, 3, 7, 20])
        k, v, q = (torch.randn(1, 2, t, 4, generator=g) for _ in range(3))
        lo = cache.length
        first = cache.first_key(t)
        ck, cv = cache.append(k, v)
        keys, vals = torch.cat([keys, k], 2), torch.cat([vals, v], 2)
        assert ck.shape[2] == lo + t - first
        mask = causal_window_mask(torch.arange(lo, lo + t)[None], torch.arange(first, lo + t)[None], window)
        got = attention(q, ck, cv, mask)
        assert torch.allclose(got, _reference(keys, vals, q, lo, window), atol=1e-6)
    assert rolled > 50 and cache.length > 100
    if window is not None:
        assert cache.k.shape[2] == 2 * (window + slack)  # flat memory


def test_ring_cache_refuses_a_rollback_past_its_slack():
    cache = KVCache(window=4, slack=2)
    for _ in range(20):
        cache.append(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    cache.crop(17)  # two positions behind the furthest write (19): positions 14..16 still held
    with pytest.raises(ValueError, match="slack"):
        cache.crop(16)


def test_rope_table_equals_the_formula():
    table = RopeTable(16, 500000.0, 300)
    pos = torch.tensor([[0, 5, 17, 299], [3, 3, 200, 1]])
    freqs = table(pos)
    cos, sin = rope_cos_sin(pos, 16, 500000.0, torch.float32)
    assert torch.equal(freqs.real, cos) and torch.equal(freqs.imag, sin)
    x = torch.randn(2, 3, 4, 16)  # the complex product is the pairwise rotation
    x1, x2 = x[..., 0::2], x[..., 1::2]
    ref = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    assert torch.allclose(apply_rope(x, freqs), ref, atol=1e-6)


def _tiny() -> fastblt.BLT:
    torch.manual_seed(0)
    m = fastblt.BLT(fastblt.preset("tiny")).eval()
    g = torch.Generator().manual_seed(99)
    ids = torch.cat([torch.ones(1, 1, dtype=torch.long), torch.randint(4, 260, (1, 200), generator=g)], 1)
    m.cfg.patching.threshold = float(m.entropies(ids).median())
    return m


def test_cached_logits_past_the_ring_match_the_full_forward():
    """300 bytes through window-64 caches (rings of 128 slots wrap twice), one byte at a time and in
    chunks with rollbacks: logits equal the uncached forward."""
    m = _tiny()
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.tensor([[BOS_ID]]), torch.randint(4, 260, (1, 300), generator=g)], 1)
    with torch.no_grad():
        full = m(ids)
        state = BLTState(m)
        rows = [state.extend(ids[0, :10].tolist())] + [state.extend([int(t)]) for t in ids[0, 10:]]
        assert (torch.cat(rows, 1) - full).abs().max().item() <= 1e-4
        state = BLTState(m)
        state.extend(ids[0, :250].tolist())  # a prefill longer than the ring
        state.rollback(240)
        chunks = [state.extend(ids[0, i:i + 9].tolist()) for i in range(240, ids.shape[1], 9)]
        assert (torch.cat(chunks, 1) - full[:, 240:]).abs().max().item() <= 1e-4


def test_long_greedy_generation_stays_equal_to_uncached():
    m = _tiny()
    out = generate(m, b"ring", max_new_bytes=260, ignore_eos=True)
    ref = generate(m, b"ring", method="blt-uncached", max_new_bytes=260, ignore_eos=True)
    assert out.bytes == ref.bytes
    for k in (4, 16):
        assert generate(m, b"ring", method="blt-s", draft_length=k, max_new_bytes=260, ignore_eos=True).bytes == ref.bytes
    assert len(prompt_ids(b"ring")) + 260 > 2 * m.cfg.decoder.window


def test_incremental_hash_rows_equal_the_batch_hash():
    from fastblt.model.hashing import hash_ngram_ids, hash_ngram_rows

    g = torch.Generator().manual_seed(3)
    ids = torch.cat([torch.tensor([[BOS_ID]]), torch.randint(0, 262, (1, 40), generator=g)], 1)
    for sizes, vocab, nf in (((3, 4, 5, 6, 7, 8), 500002, 1), ((3, 4), 257, 3), ((1, 2, 8), 4096, 2)):
        full = hash_ngram_ids(ids, sizes, vocab, nf)[0].tolist()
        seq = ids[0].tolist()
        assert hash_ngram_rows(seq, 0, sizes, vocab, nf).tolist() == full
        for i in (1, 7, 20, 40):  # a suffix that keeps the longest window gives the same rows
            lo = max(0, i - max(sizes) + 1)
            assert hash_ngram_rows(seq[lo:i + 1], i - lo, sizes, vocab, nf).tolist() == [full[i]]


def test_incremental_embedding_equals_the_batch_embedding():
    m = _tiny()
    seq = [BOS_ID] + [(7 * i) % 256 + 4 for i in range(30)]
    full = m.embed(torch.tensor([seq]))
    for grad in (True, False):  # the torch gather, and the NumPy gather generation uses
        with torch.set_grad_enabled(grad):
            for start in (0, 1, 5, 29):
                assert torch.equal(m.embed_incremental(seq[:start + 1], start), full[:, start:start + 1])
            assert torch.equal(m.embed_incremental(seq, 10), full[:, 10:])


def test_compile_without_a_compiler_warns_and_stays_eager(monkeypatch, capsys):
    import fastblt.model.runtime as C

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    m = _tiny()
    forward = m.local_decoder.forward
    assert C.compile_for_decoding(m) is False
    assert "C++ compiler" in capsys.readouterr().err
    assert m.local_decoder.forward == forward


def test_roofline_rows_follow_eq8_on_a_tiny_model():
    from fastblt.evaluation import roofline as R

    m = fastblt.BLT(fastblt.preset("tiny", diffusion_block_size=4)).eval()
    limits = {"matmul_flops": {"float32": 1e9}, "copy_bandwidth": 1e9, "read_bandwidth": 1e9,
              "device": "cpu", "threads": 1}
    rows = [R.measure_method(m, meth, 12, limits) for meth in R.methods_for(m)]
    for r in rows:
        res = generate(m, R.PROMPT, method=r["method"], max_new_bytes=12, ignore_eos=True,
                       **{k: v for k, v in r.items() if k in ("draft_length", "unmask", "alpha")})
        # fp32 weights: b = 4 bytes per parameter, twice eq. 8's 16-bit estimate
        assert math.isclose(r["eq8_bytes"], 2 * res.stats["est_bandwidth_gb"] * 1e9, rel_tol=1e-9)
        assert r["matmul_flop"] > 0 and r["weight_bytes_per_second"] > 0
    check = R.eq8_check(rows)
    assert check is not None and check["predicted_speedup"] > 1
    doc = {"limits": limits, "models": [{"name": "tiny", "dtype": "float32", "new_bytes": 12, "methods": rows,
                                         "decoder_step": R.decode_step(m, 3, limits), "eq8_check": check}]}
    assert "Eq. 8 predicts" in R.markdown(doc)


def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    from fastblt.model.runtime import resolve_device, resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device.*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="--device must be"):
        resolve_device("tpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_cli_generate_on_cuda_without_cuda_says_what_to_do(monkeypatch, capsys):
    from fastblt.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["generate", "--device", "cuda", "hello"]) == 1
    assert "no CUDA device" in capsys.readouterr().err
