"""Generation: cached BLT vs the full forward, BLT-S exactness, NFE accounting, stops, streaming, CLI."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastblt
from fastblt.config import EOS_ID, OFFSET
from fastblt.generation import BLTState, Output, SamplingParams, generate, stream_text
from fastblt.generation.api import prompt_ids
from fastblt.generation.sampling import probabilities
from fastblt.model.params import param_breakdown

from helpers import random_ids, tiny_model

PROMPTS = [b"", b"hello world", bytes([0xFF, 0xFE, 0x00, 0x80, 0xC3])]
SPEC = [("fused", 4), ("fused", 8), ("fused", 16), ("paper", 4), ("paper", 8), ("paper", 16)]


@pytest.fixture(scope="module")
def model() -> fastblt.BLT:
    return tiny_model()


# ----------------------------------------------------------------------------- cached == full forward
@pytest.mark.parametrize("patching", [{}, {"rule": "monotonic", "monotonic_threshold": 0.05},
                                      {"mode": "static", "patch_size": 3}, {"mode": "space"},
                                      {"max_patch_length": 3}])
def test_cached_step_logits_match_full_forward(patching):
    m = tiny_model(**patching)
    out = generate(m, b"The cat sat on the mat.", max_new_bytes=100)
    ids = torch.tensor([prompt_ids(b"The cat sat on the mat." + out.bytes)])
    n0 = 24
    with torch.no_grad():
        full = m(ids)
        state = BLTState(m)
        rows = [state.extend(ids[0, :n0].tolist())]
        rows += [state.extend([int(t)]) for t in ids[0, n0:]]
    assert (torch.cat(rows, 1) - full).abs().max().item() <= 1e-4
    assert torch.equal(state.starts(), m.patch_starts(ids))
    # chunked prefill and rollback give the same logits too
    with torch.no_grad():
        state = BLTState(m)
        state.extend(ids[0, :50].tolist())
        state.rollback(30)
        chunks = [state.extend(ids[0, i:i + 7].tolist()) for i in range(30, ids.shape[1], 7)]
    assert (torch.cat(chunks, 1) - full[:, 30:]).abs().max().item() <= 1e-4


def test_greedy_cached_equals_uncached(model):
    for p in PROMPTS:
        a = generate(model, p, method="blt", max_new_bytes=48)
        b = generate(model, p, method="blt-uncached", max_new_bytes=48)
        assert a.bytes == b.bytes
        assert a.stats["decoder_nfe"] == b.stats["decoder_nfe"] == a.stats["new_bytes"] + (a.stop_reason == "eos")
        assert a.stats["global_nfe"] < b.stats["global_nfe"]  # E+G only when a patch closes


@pytest.mark.parametrize("schedule,k", SPEC)
def test_greedy_blt_s_equals_blt(model, schedule, k):
    for p in PROMPTS:
        ref = generate(model, p, method="blt", max_new_bytes=64)
        r = generate(model, p, method="blt-s", max_new_bytes=64, draft_length=k, schedule=schedule)
        assert r.bytes == ref.bytes
        s = r.stats
        assert 0 <= s["accepted_bytes"] <= s["drafted_bytes"] <= k * s["iterations"]
        assert s["global_nfe_paper"] == 2 * s["iterations"]
        assert s["decoder_nfe"] == 1 + s["drafted_bytes"] + s["verify_passes"]
        assert s["global_nfe"] <= 1 + s["global_nfe_paper"]  # + the prefill's
        if schedule == "paper":  # Algorithm 2: one verifying pass per iteration
            assert s["verify_passes"] == s["iterations"]
        else:  # draft rows before the first new patch are reused: 0 to 2 passes
            assert s["verify_passes"] <= 2 * s["iterations"]
        assert s["est_bandwidth_gb_paper_counting"] >= 0 and s["acceptance_rate"] <= 1


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("patching", [{}, {"mode": "static", "patch_size": 5}])
def test_lazy_verification_equals_algorithm_2(temperature, patching):
    """verify_lazy (fused schedule: reused draft rows, global only past the first new patch) gives
    Algorithm 2's accepted bytes, verifier byte, sampler draws and state, iteration by iteration."""
    from fastblt.generation.blt_s import draft
    from fastblt.generation.sampling import Sampler
    from fastblt.generation.speculative import verify, verify_lazy

    model, params = tiny_model(**patching), SamplingParams(temperature=temperature)
    rows = {False: 0, True: 0}  # decoder rows computed, drafting included
    which = [False]
    model.local_decoder.register_forward_hook(lambda mod, args, out: rows.__setitem__(which[0], rows[which[0]] + args[0].shape[1]))
    for seed, text in enumerate([b"The cat sat on the mat. The dog", b"0123456789" * 3, b"hello world"]):
        trace = {}
        for lazy in (False, True):
            sampler, out, which[0] = Sampler(params, seed), [], lazy
            with torch.no_grad():
                st = BLTState(model)
                y = sampler.pick(st.extend(prompt_ids(text))[:, -1])
                for _ in range(8):
                    n = len(st)
                    st.append([y])
                    st.encode()
                    if st.n_glob < st.n_closed:
                        st.close_patches()
                    kv, latent = st.last_latent_vectors(), st.n_glob - 1
                    drafted, logits = draft(st, kv, 6, sampler)
                    assert logits.shape == (len(drafted), 260)
                    if lazy:
                        acc, y = verify_lazy(st, n, drafted, sampler, latent, logits)
                    else:
                        acc, y = verify(st, n, drafted, sampler)
                    assert st.ids[n + 1:] == acc and st.n_dec == len(st) and st.n_enc == len(st)
                    out.append((acc, y, st.n_glob <= st.n_closed))
            trace[lazy] = (out, st.ids, sampler.generator.get_state().tolist())
        assert trace[True] == trace[False], text
    assert rows[True] < rows[False]  # draft rows were reused (else the test proves nothing)


# ----------------------------------------------------------------------------- accounting
def _hook_counts(model):
    counts = {"decoder_nfe": 0, "global_nfe": 0, "entropy_nfe": 0, "encoder_steps": 0}
    mods = {"decoder_nfe": model.local_decoder, "global_nfe": model.global_transformer,
            "entropy_nfe": model.patcher, "encoder_steps": model.local_encoder}
    handles = [m.register_forward_hook(lambda *_, key=key: counts.__setitem__(key, counts[key] + 1))
               for key, m in mods.items()]
    return counts, handles


@pytest.mark.parametrize("method,kw", [("blt", {}), ("blt-uncached", {}), ("blt-s", {"schedule": "fused"}),
                                       ("blt-s", {"schedule": "paper", "draft_length": 4})])
def test_nfe_counters_match_forward_hooks(model, method, kw):
    counts, handles = _hook_counts(model)
    try:
        r = generate(model, b"count me", method=method, max_new_bytes=40, **kw)
    finally:
        for h in handles:
            h.remove()
    assert {k: r.stats[k] for k in counts} == counts
    p = param_breakdown(model)
    expect = 2 * (counts["decoder_nfe"] * p["local_decoder"]
                  + counts["global_nfe"] * (p["local_encoder"] + p["global"])) / 1e9
    assert math.isclose(r.stats["est_bandwidth_gb"], expect)


def test_max_new_bytes_zero(model):
    for method in ("blt", "blt-uncached", "blt-s"):
        r = generate(model, b"abc", method=method, max_new_bytes=0)
        assert r.bytes == b"" and r.stats["decoder_nfe"] == r.stats["global_nfe"] == r.stats["entropy_nfe"] == 0


# ----------------------------------------------------------------------------- stops and streaming
def test_output_stop_inside_a_verified_chunk():
    seen: list[bytes] = []
    out = Output(100, [b"cd"], seen.append)
    assert out.emit([b + OFFSET for b in b"abcdef"])  # a verified draft containing the stop string
    assert bytes(out.data) == b"abcd" and out.reason == "stop" and b"".join(seen) == b"abcd"
    out = Output(100, [], seen.append)
    assert out.emit([OFFSET + 65, EOS_ID, OFFSET + 66]) and bytes(out.data) == b"A" and out.reason == "eos"


@pytest.mark.parametrize("method,kw", [("blt", {}), ("blt-uncached", {}), ("blt-s", {"draft_length": 16})])
def test_stop_strings_truncate(model, method, kw):
    full = generate(model, b"stop test", max_new_bytes=80).bytes
    stop = full[40:43]
    expect = full[:full.find(stop) + len(stop)]
    chunks: list[bytes] = []
    r = generate(model, b"stop test", method=method, max_new_bytes=80, stop=[b"\x00\x01never", stop],
                 stream=chunks.append, **kw)
    assert r.bytes == expect and r.stop_reason == "stop" and b"".join(chunks) == expect


def test_eos_ends_generation_for_every_method():
    m = tiny_model()
    ref = generate(m, b"eos", max_new_bytes=60).bytes
    b = max(set(ref), key=ref.count)  # make EOS beat the most frequent greedy byte
    with torch.no_grad():
        m.lm_head.weight[EOS_ID] = 2 * m.lm_head.weight[b + OFFSET]
    outs = [generate(m, b"eos", method=meth, max_new_bytes=60, **kw)
            for meth, kw in [("blt", {}), ("blt-uncached", {}), ("blt-s", {"draft_length": 8}),
                             ("blt-s", {"schedule": "paper"})]]
    assert outs[0].stop_reason == "eos" and len(outs[0].bytes) < 60
    assert all(o.bytes == outs[0].bytes and o.stop_reason == "eos" for o in outs)


@pytest.mark.parametrize("method", ["blt", "blt-s"])
def test_streaming_equals_non_streaming(model, method):
    chunks: list[bytes] = []
    r = generate(model, "héllo ✓", method=method, max_new_bytes=50, stream=chunks.append)
    assert b"".join(chunks) == r.bytes == generate(model, "héllo ✓", method=method, max_new_bytes=50).bytes
    pieces = list(stream_text(model, "héllo ✓", method=method, max_new_bytes=50))
    assert "".join(pieces) == r.text


def test_stream_text_does_not_split_characters(monkeypatch):
    import fastblt.generation.api as api

    def fake_generate(model, prompt, stream=None, **kw):
        for chunk in [b"a\xc3", b"\xa9\xe2\x9c", b"\x93b"]:  # 'aé✓b' split mid-character
            stream(chunk)
        return api.GenerationResult(b"a\xc3\xa9\xe2\x9c\x93b")

    monkeypatch.setattr(api, "generate", fake_generate)
    assert list(api.stream_text(None, b"")) == ["a", "é", "✓b"]


# ----------------------------------------------------------------------------- properties
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.binary(max_size=40))
def test_every_method_agrees_on_random_prompts(model, prompt):
    ref = generate(model, prompt, method="blt-uncached", max_new_bytes=16)
    assert len(ref.bytes) <= 16
    for method, kw in [("blt", {}), ("blt-s", {"draft_length": 4}), ("blt-s", {"schedule": "paper"})]:
        assert generate(model, prompt, method=method, max_new_bytes=16, **kw).bytes == ref.bytes


# ----------------------------------------------------------------------------- sampling
def test_sampling_is_reproducible_with_a_seed(model):
    kw = dict(max_new_bytes=40, temperature=0.8, top_k=20, top_p=0.9)
    for method in ("blt", "blt-s"):
        a = generate(model, b"seed", method=method, seed=7, **kw)
        assert a.bytes == generate(model, b"seed", method=method, seed=7, **kw).bytes
        assert a.bytes != generate(model, b"seed", method=method, seed=8, **kw).bytes
        assert a.stats["seed"] == 7


def test_top_k_top_p_filtering():
    logits = torch.tensor([[0.0] * 4 + [3.0, 2.0, 1.0] + [-5.0] * 253])
    p = probabilities(logits, SamplingParams(1.0, top_k=2))
    assert set(p.nonzero()[:, 1].tolist()) == {4, 5}
    p = probabilities(logits, SamplingParams(1.0, top_p=0.5))
    assert p.nonzero()[:, 1].tolist() == [4]
    assert probabilities(logits, SamplingParams(0.0))[0, 4] == 1
    big = torch.zeros(1, 260)
    big[0, 1] = 100.0  # BOS is suppressed even when it is the argmax
    assert probabilities(big, SamplingParams(0.0))[0, 1] == 0


@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=0),
                                dict(top_p=0.0), dict(top_p=1.5), dict(method="nope"), dict(stop=[b""]),
                                dict(max_new_bytes=-1), dict(method="blt-s", draft_length=0),
                                dict(method="blt-s", schedule="eager"), dict(bogus=1),
                                dict(method="blt", draft_length=4), dict(method="blt-uncached", schedule="paper"),
                                dict(method="blt-s", alpha=0.5)])
def test_invalid_arguments_raise_value_error(model, kw):
    with pytest.raises(ValueError):
        generate(model, b"x", **{"max_new_bytes": 4, **kw})


def test_prompt_longer_than_context_is_rejected(model):
    limit = model.cfg.max_seq_len
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, b"a" * (limit - 10), max_new_bytes=10)


def _chi2(counts: dict, probs: dict, n: int) -> float:
    return sum((counts.get(k, 0) - n * p) ** 2 / (n * p) for k, p in probs.items() if p > 0)


def test_blt_s_sampling_keeps_the_target_distribution():
    """Joint law of the first 3 bytes (top-k 2, T = 1): BLT-S and cached BLT vs the exact model law.

    Byte 1 comes from the prefill; bytes 2-3 from a drafted-and-verified iteration (draft rejected or
    accepted), so both acceptance paths are exercised. χ² with 7 dof, critical value 24.3 (p = 0.001).
    """
    m = tiny_model(seed=3)
    params = SamplingParams(1.0, top_k=2)
    prompt = b"dist"
    exact: dict[bytes, float] = {}
    with torch.no_grad():
        def law(prefix: bytes) -> torch.Tensor:
            return probabilities(m(torch.tensor([prompt_ids(prompt + prefix)]))[:, -1], params)[0]
        p1 = law(b"")
        for i1 in p1.nonzero()[:, 0].tolist():
            p2 = law(bytes([i1 - OFFSET]))
            for i2 in p2.nonzero()[:, 0].tolist():
                pre = bytes([i1 - OFFSET, i2 - OFFSET])
                p3 = law(pre)
                for i3 in p3.nonzero()[:, 0].tolist():
                    exact[pre + bytes([i3 - OFFSET])] = float(p1[i1] * p2[i2] * p3[i3])
    n = 320
    for method in ("blt-s", "blt"):
        counts: dict[bytes, int] = {}
        drafted = accepted = 0
        for s in range(n):
            r = generate(m, prompt, method=method, max_new_bytes=3, temperature=1.0, top_k=2, seed=s,
                         **({"draft_length": 4} if method == "blt-s" else {}))
            counts[r.bytes] = counts.get(r.bytes, 0) + 1
            drafted += r.stats["drafted_bytes"]
            accepted += r.stats["accepted_bytes"]
        assert set(counts) <= set(exact)
        assert _chi2(counts, exact, n) < 24.3, (method, counts, exact)
        if method == "blt-s":
            assert 0 < accepted < drafted  # both the accept and the reject path ran


# ----------------------------------------------------------------------------- transformers parity
def test_greedy_cached_blt_matches_transformers_generate(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BltConfig(
        encoder_hash_byte_group_vocab=101, encoder_hash_byte_group_size=[3, 4], cross_attn_k=2,
        patcher_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        encoder_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, cross_attn_k=2,
                            hidden_size_global=64, intermediate_size=64),
        decoder_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, cross_attn_k=2,
                            hidden_size_global=64, intermediate_size=64),
        global_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128))
    hf = transformers.BltForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = fastblt.load(tmp_path)
    thr = float(ours.entropies(random_ids(200, seed=5)).median())
    ours.cfg.patching.threshold = thr
    hf.config.patching_threshold = thr
    prompt = b"Parity with transformers: "
    ids = torch.tensor([prompt_ids(prompt)])
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=30, do_sample=False, use_cache=False, suppress_tokens=[0, 1, 3],
                          eos_token_id=EOS_ID, pad_token_id=EOS_ID)
    theirs = out[0, ids.shape[1]:].tolist()
    r = generate(ours, prompt, method="blt", max_new_bytes=30)
    mine = [b + OFFSET for b in r.bytes] + ([EOS_ID] if r.stop_reason == "eos" else [])
    assert mine == theirs[:len(mine)] and (len(mine) == len(theirs) or theirs[len(mine)] == EOS_ID)
    assert generate(ours, prompt, method="blt-s", max_new_bytes=30).bytes == r.bytes


# ----------------------------------------------------------------------------- CLI
def test_cli_generate_json_stream_and_errors(tmp_path, capsysbinary, model):
    from fastblt.cli import main

    fastblt.save(model, tmp_path / "m")
    base = ["generate", "--model", str(tmp_path / "m"), "--max-new-bytes", "12"]
    assert main(base + ["--method", "blt-s", "--draft-length", "4", "--json", "hi"]) == 0
    obj = json.loads(capsysbinary.readouterr().out)
    ref = generate(model, b"hi", max_new_bytes=12)
    assert obj["text"] == ref.text and obj["stats"]["new_bytes"] == len(ref.bytes)
    assert obj["stop_reason"] == ref.stop_reason
    assert main(base + ["--stream", "hi"]) == 0
    assert capsysbinary.readouterr().out == ref.bytes + b"\n"
    # --stop takes the raw bytes of the argument, as the prompt does (here bytes that are not UTF-8)
    stop = next(ref.bytes[i:i + 2] for i in range(len(ref.bytes) - 1) if ref.bytes[i] >= 0x80)
    assert main(base + ["--json", "--stop", os.fsdecode(stop), "hi"]) == 0
    obj = json.loads(capsysbinary.readouterr().out)
    want = generate(model, b"hi", max_new_bytes=12, stop=[stop])
    assert obj["stop_reason"] == want.stop_reason == "stop" and obj["text"] == want.text
    with pytest.raises(SystemExit) as e:
        main(base + ["--top-p", "2", "hi"])
    assert e.value.code != 0
    assert main(["generate", "--model", str(tmp_path / "missing"), "hi"]) != 0


def test_cli_without_model_explains_missing_default(capsysbinary, monkeypatch, tmp_path):
    import fastblt.checkpoint
    from fastblt.cli import main

    monkeypatch.setattr(fastblt.checkpoint, "DEFAULT_MODEL", tmp_path / "not-shipped")
    assert main(["generate", "hi"]) != 0
    assert b"--model" in capsysbinary.readouterr().err


def test_shipped_models_load_and_keep_the_lossless_contracts():
    from fastblt.checkpoint import DEFAULT_MODEL

    bltd = fastblt.load(DEFAULT_MODEL)
    assert bltd.cfg.diffusion_block_size == 8 and bltd.cfg.patching.max_patch_length == 8
    blt = fastblt.load(DEFAULT_MODEL.parent / "blt_model")
    prompt = b"def add(a, b):\n    "
    for model, methods in ((bltd, ("blt-s", "blt-dv")), (blt, ("blt-s",))):
        ref = generate(model, prompt, method="blt", max_new_bytes=24, ignore_eos=True).bytes
        for m in methods:
            assert generate(model, prompt, method=m, max_new_bytes=24, ignore_eos=True).bytes == ref, m


def test_ignore_eos_generates_exactly_n_bytes_and_keeps_the_contracts():
    m = tiny_model(diffusion_block_size=4)
    ref = generate(m, b"", method="blt", max_new_bytes=48, ignore_eos=True)
    assert len(ref.bytes) == 48 and ref.stop_reason == "length" and ref.stats["decoder_nfe"] == 48
    for method, kw in (("blt-s", {"draft_length": 4}), ("blt-dv", {}), ("blt-uncached", {})):
        assert generate(m, b"", method=method, max_new_bytes=48, ignore_eos=True, **kw).bytes == ref.bytes, method
    assert len(generate(m, b"", method="blt-d", max_new_bytes=48, ignore_eos=True).bytes) == 48
