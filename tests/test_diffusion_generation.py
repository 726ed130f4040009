"""Generation with BLT-D (block diffusion) and BLT-DV (diffusion + verification), Fast BLT §3.1, §5.2.

Contracts: greedy BLT-DV == greedy cached BLT; greedy BLT-D == an uncached Algorithm 1 built on
``block_logits_inference``; the cached block passes equal that reference; pass counts, NFE
counters (checked with forward hooks), stops, seeded sampling, errors and the CLI flags.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

import fastblt
from fastblt.config import EOS_ID, MASK_ID, OFFSET
from fastblt.generation import BLTState, blt_d, blt_dv, generate
from fastblt.generation.api import prompt_ids
from fastblt.generation.sampling import suppress
from fastblt.model.diffusion import block_logits_inference

from helpers import tiny_model

PROMPTS = [b"", b"hello world", bytes([0xFF, 0xFE, 0x00, 0x80, 0xC3]) * 3]
RULES = [{"unmask": "one-step"}, {"unmask": "confidence", "alpha": 0.3},
         {"unmask": "entropy", "gamma": 1.5}, {"unmask": "confidence", "alpha": 2.0, "max_steps_per_block": 2}]


@pytest.fixture(scope="module")
def models() -> dict[int, fastblt.BLT]:
    return {b: tiny_model(diffusion_block_size=b) for b in (1, 4, 8, 16)}


def _ids(data: bytes) -> list[int]:
    return [b + OFFSET for b in data]


# ----------------------------------------------------------------------------- BLT-DV == BLT
@pytest.mark.parametrize("b", [4, 8, 16])
@pytest.mark.parametrize("schedule", ["fused", "paper"])
@pytest.mark.parametrize("cutoff", [0.0, 0.3])
def test_greedy_blt_dv_equals_blt(models, b, schedule, cutoff):
    """cutoff 0: whole blocks are verified (random weights are never confident, so 0.3 drafts one byte)."""
    m = models[b]
    for p in PROMPTS:
        ref = generate(m, p, method="blt", max_new_bytes=40)
        for rule in RULES:
            r = generate(m, p, method="blt-dv", max_new_bytes=40, schedule=schedule, draft_cutoff=cutoff, **rule)
            assert r.bytes == ref.bytes and r.stop_reason == ref.stop_reason, (p, rule)
            s = r.stats
            assert s["global_nfe_paper"] == 2 * s["iterations"]
            assert s["decoder_nfe"] == s["diffusion_steps"] + s["verify_passes"]  # s passes + verification
            assert s["global_nfe"] <= s["global_nfe_paper"]
            if schedule == "paper":  # Algorithm 2: one verifying pass per iteration
                assert s["verify_passes"] == s["iterations"]
            else:  # lazy: the rows before the first new patch, then (if they all matched) the rest
                assert s["iterations"] <= s["verify_passes"] <= 2 * s["iterations"]


@pytest.mark.parametrize("schedule", ["fused", "paper"])
def test_blt_dv_accepts_correct_drafts(models, monkeypatch, schedule):
    """Random weights never draft the verifier's bytes; an oracle drafter (the real diffusion passes,
    values replaced by the greedy BLT continuation, one drafted byte corrupted in most blocks) exercises
    partial acceptance and the cache rollbacks."""
    m = models[8]
    prompt = b"hello world"
    ref = _ids(generate(m, prompt, method="blt", max_new_bytes=60).bytes)
    real = blt_dv.fill_block
    calls = []

    def oracle(state, kv, size, rule, pick, clean_kv=None, ignore_eos=False, first=None, with_confidence=False):
        block = real(state, kv, size, rule, pick, clean_kv, ignore_eos, first, with_confidence)
        at = len(state) - len(prompt_ids(prompt))
        calls.append(1)
        good = ref[at:at + size] + [OFFSET] * size
        bad = 2 + len(calls) % 7  # 8: nothing corrupted
        ids = [(g + 1 - OFFSET) % 256 + OFFSET if i == bad else g for i, g in enumerate(good[:size])]
        return block._replace(ids=ids, confidence=[1.0] * size)  # every slot kept (draft_cutoff)

    monkeypatch.setattr(blt_dv, "fill_block", oracle)
    r = generate(m, prompt, method="blt-dv", max_new_bytes=60, schedule=schedule)
    assert _ids(r.bytes) == ref
    assert 0 < r.stats["accepted_bytes"] < r.stats["drafted_bytes"]
    assert r.stats["iterations"] < 20



@pytest.mark.parametrize("rule", [{"unmask": "one-step"}, {"unmask": "confidence", "alpha": 0.3}])
def test_fused_blt_dv_first_drafted_byte_is_the_verifiers(models, monkeypatch, rule):
    """Fused schedule: the block pass's last clean row (the pending byte's) predicts slot 0; when that
    row reads the verifier's latent its logits are the verifier's row n, reused by verify_lazy, and
    the first drafted byte is always accepted (greedy). Sampled BLT-DV stays sampled BLT, seed by seed."""
    from fastblt.generation import speculative

    m, real, seen, greedy = models[8], speculative.verify_lazy, [], [True]

    def spy(state, n, drafted, sampler, draft_latent=None, draft_logits=None):
        state.patch()  # verify_lazy's first step (idempotent): row n's latent is known from here
        reused = draft_logits is not None and bool(drafted) and state.row_patch(n) == draft_latent
        assert draft_logits is None or draft_logits.shape == (1, 260)  # row n only
        accepted, y = real(state, n, drafted, sampler, draft_latent, draft_logits)
        seen.append((greedy[0], reused, len(accepted)))
        return accepted, y

    monkeypatch.setattr(speculative, "verify_lazy", spy)
    rule = {**rule, "draft_cutoff": 0.0}  # whole blocks
    for p in PROMPTS:
        greedy[0] = True
        assert generate(m, p, method="blt-dv", max_new_bytes=40, **rule).bytes == \
            generate(m, p, method="blt", max_new_bytes=40).bytes
        greedy[0] = False
        for seed in range(3):
            kw = dict(max_new_bytes=24, temperature=1.0, seed=seed)
            assert generate(m, p, method="blt-dv", **kw, **rule).bytes == generate(m, p, method="blt", **kw).bytes
    firsts = [acc for g, reused, acc in seen if g and reused]
    assert len(firsts) > 10 and min(firsts) >= 1  # reused rows ran, and their drafted byte always matched
    assert any(reused for g, reused, _ in seen if not g)


@pytest.mark.parametrize("schedule", ["fused", "paper"])
def test_draft_cutoff_ends_the_draft_at_the_first_doubted_slot(models, monkeypatch, schedule):
    """draft_cutoff keeps slots up to (not including) the first slot after slot 0 whose confidence is
    below it; the output stays BLT's, greedy and sampled."""
    m, real, sizes = models[8], blt_dv.fill_block, []
    pattern = [0.0, 0.9, 0.5, 0.2, 0.9, 0.9, 0.9, 0.9]  # slot 0's confidence never matters

    def fake_confidence(*a, **k):
        block = real(*a, **k)
        sizes.append(len(block.ids))
        return block._replace(confidence=pattern[:len(block.ids)])

    monkeypatch.setattr(blt_dv, "fill_block", fake_confidence)
    for cutoff, keep in ((0.0, 8), (0.3, 3), (0.6, 2), (1.5, 1)):
        for kw in ({}, {"temperature": 1.0, "seed": 5}):
            sizes.clear()
            r = generate(m, b"hello world", method="blt-dv", max_new_bytes=40, schedule=schedule,
                         draft_cutoff=cutoff, **kw)
            assert r.bytes == generate(m, b"hello world", method="blt", max_new_bytes=40, **kw).bytes
            assert r.stats["drafted_bytes"] == sum(min(keep, n) for n in sizes)  # no drafted EOS here

# ----------------------------------------------------------------------------- BLT-D semantics
def _reference_blt_d(model, prompt: bytes, n_new: int, b: int, rule: blt_d.UnmaskRule,
                     ar_first: bool = False) -> list[int]:
    """Uncached greedy Algorithm 1: ``block_logits_inference`` on the full prefix for every pass.
    ar_first: slot 0 of every block is uncached greedy BLT's next byte after the prefix."""
    x = prompt_ids(prompt)
    out: list[int] = []
    while len(out) < n_new:
        size = min(b, n_new - len(out))
        slots, masked, passes = [MASK_ID] * size, list(range(size)), 0
        if ar_first:
            slots[0], masked = int(suppress(model(torch.tensor([x]))[0, -1]).argmax()), masked[1:]
        while masked:
            logits = block_logits_inference(model, torch.tensor([x]), torch.tensor([slots]))[0]
            passes += 1
            last = rule.max_steps is not None and passes >= rule.max_steps
            chosen = list(range(len(masked))) if last else rule.choose(logits[masked])
            where = [masked[i] for i in chosen]
            for i in where:
                slots[i] = int(suppress(logits[i]).argmax())
            masked = [i for i in masked if i not in where]
        x += slots
        out += slots
    return out


@pytest.mark.parametrize("b,prompt", [(1, b"hello world"), (4, b""), (8, b"hello world"), (16, PROMPTS[2])])
def test_greedy_blt_d_equals_uncached_algorithm_1(models, b, prompt):
    """BLT-D with B = 1 is *not* greedy BLT on random weights (a MASK slot row with the provisional
    latent is another computation than the clean row of the last byte); its contract is the
    uncached reference of Algorithm 1, for every block size and unmasking rule."""
    m = models[b]
    with torch.no_grad():
        for rule in RULES[:3] if b > 1 else RULES[:1]:
            r = generate(m, prompt, method="blt-d", max_new_bytes=24, **rule)
            ref = _reference_blt_d(m, prompt, 24, b, blt_d.UnmaskRule(rule["unmask"], rule.get("alpha", 0.7),
                                                                    rule.get("gamma", 1.0)))
            ids = _ids(r.bytes) + ([EOS_ID] if r.stop_reason == "eos" else [])
            assert ids == ref[:len(ids)], rule


@pytest.mark.parametrize("b,prompt", [(1, b"hello world"), (4, b""), (8, b"hello world"), (16, PROMPTS[2])])
def test_blt_d_ar_first_slot_equals_its_uncached_reference(models, b, prompt):
    """first_slot="ar": every block's first byte is greedy BLT's next byte after the prefix (the block
    pass's last clean row, on its own latent), the other slots Algorithm 1's."""
    m = models[b]
    with torch.no_grad():
        for rule in RULES[:3] if b > 1 else RULES[:1]:
            r = generate(m, prompt, method="blt-d", max_new_bytes=24, first_slot="ar", **rule)
            ref = _reference_blt_d(m, prompt, 24, b, blt_d.UnmaskRule(rule["unmask"], rule.get("alpha", 0.7),
                                                                    rule.get("gamma", 1.0)), ar_first=True)
            ids = _ids(r.bytes) + ([EOS_ID] if r.stop_reason == "eos" else [])
            assert ids == ref[:len(ids)], rule
    if b == 1:  # a block of one byte is the AR byte: BLT-D is greedy BLT
        assert generate(m, prompt, method="blt-d", max_new_bytes=24, first_slot="ar").bytes == \
            generate(m, prompt, method="blt", max_new_bytes=24).bytes


@pytest.mark.parametrize("prefix_len,b", [(1, 8), (12, 4), (37, 8), (60, 16)])
def test_cached_block_passes_equal_reference(models, prefix_len, b):
    m = models[b]
    g = torch.Generator().manual_seed(prefix_len)
    full = [1] + torch.randint(4, 260, (prefix_len + 20,), generator=g).tolist()
    with torch.no_grad():
        state = BLTState(m)
        for n in (prefix_len, prefix_len + 7, prefix_len + 20):  # blocks after growing prefixes
            state.append(full[len(state):n])
            state.patch()
            state.encode()
            kv = state.close_patches(provisional=True)
            prefix = torch.tensor([full[:n]])
            slots = [MASK_ID] * b
            first = state.decode_block(slots, kv)
            assert (first - block_logits_inference(m, prefix, torch.tensor([slots]))).abs().max() <= 1e-4
            assert state.n_dec == n and all(c.length == n for c in state.dec_caches)
            slots[::2] = full[1:1 + len(slots[::2])]  # a later pass: some slots filled
            later = state.decode_block(slots, kv)
            assert (later - block_logits_inference(m, prefix, torch.tensor([slots]))).abs().max() <= 1e-4
    # the clean rows that entered the cache are BLT's own rows: the next cached row matches BLT
    with torch.no_grad():
        nxt = state.extend([full[len(state)]])
        assert (nxt - m(torch.tensor([full[:len(state)]]))[:, -1:]).abs().max() <= 1e-4


def test_pass_counts(models):
    m = models[8]
    # α > 1: one slot per pass → B passes per block
    r = generate(m, b"hi", method="blt-d", max_new_bytes=24, alpha=1.5)
    assert r.stats["iterations"] == 3 and r.stats["diffusion_steps"] == 24 == r.stats["decoder_nfe"]
    # one-step: one pass per block; the last block shrinks to the remaining budget
    r = generate(m, b"hi", method="blt-d", max_new_bytes=21, unmask="one-step")
    assert len(r.bytes) == 21 and r.stats["iterations"] == 3
    assert r.stats["decoder_nfe"] == r.stats["diffusion_steps"] == 3
    assert r.stats["bytes_per_decoder_pass"] == 7.0
    # max_steps_per_block caps the passes
    r = generate(m, b"hi", method="blt-d", max_new_bytes=16, alpha=1.5, max_steps_per_block=3)
    assert r.stats["diffusion_steps"] == 6
    # the default block size is the trained one
    assert generate(m, b"hi", method="blt-d", max_new_bytes=16, unmask="one-step").stats["iterations"] == 2
    r = generate(m, b"hi", method="blt-d", max_new_bytes=16, unmask="one-step", block_size=4)
    assert r.stats["iterations"] == 4


def test_unmask_rules():
    probs = torch.tensor([[0.9, 0.1, 0, 0], [0.5, 0.5, 0, 0], [0.8, 0.2, 0, 0], [0.25] * 4])
    logits = torch.cat([probs.clamp_min(1e-12).log(), torch.full((4, 256), -1e9)], 1)  # specials 0..3 → use 4..
    logits = logits.roll(4, dims=1)
    ent = torch.special.entr(probs).sum(-1)  # ≈ 0.325, 0.693, 0.500, 1.386 nats
    assert blt_d.UnmaskRule("confidence", alpha=0.7).choose(logits) == [0, 2]
    assert blt_d.UnmaskRule("confidence", alpha=0.95).choose(logits) == [0]  # none above α: the most confident
    assert blt_d.UnmaskRule("entropy", gamma=float(ent[0] + ent[2]) + 1e-3).choose(logits) == [0, 2]
    assert blt_d.UnmaskRule("entropy", gamma=0.1).choose(logits) == [0]  # none fits: the lowest entropy
    assert blt_d.UnmaskRule("entropy", gamma=10.0).choose(logits) == [0, 1, 2, 3]
    assert blt_d.UnmaskRule("one-step").choose(logits) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- NFE accounting
def _hooked_counts(model, **kw) -> tuple[dict, dict]:
    counts = {"decoder_nfe": 0, "global_nfe": 0, "entropy_nfe": 0}
    mods = {"decoder_nfe": model.local_decoder, "global_nfe": model.global_transformer, "entropy_nfe": model.patcher}

    def hook(name):
        def f(*_):
            counts[name] += 1
        return f

    handles = [mod.register_forward_hook(hook(k)) for k, mod in mods.items()]
    try:
        r = generate(model, b"hello", max_new_bytes=30, **kw)
    finally:
        for h in handles:
            h.remove()
    return counts, r.stats


@pytest.mark.parametrize("kw", [{"method": "blt-d"}, {"method": "blt-d", "unmask": "one-step"},
                                {"method": "blt-dv", "schedule": "fused"}, {"method": "blt-dv", "schedule": "paper"},
                                {"method": "blt-dv", "unmask": "entropy", "gamma": 0.5}])
def test_nfe_counters_match_forward_calls(models, kw):
    counts, stats = _hooked_counts(models[8], **kw)
    for k, v in counts.items():
        assert stats[k] == v, k
    if kw["method"] == "blt-d":  # one entropy + global call per block
        assert stats["global_nfe"] == stats["entropy_nfe"] == stats["iterations"]


# ----------------------------------------------------------------------------- stops, sampling, errors
def test_eos_inside_a_block_truncates(models, monkeypatch):
    m = models[8]
    base = generate(m, b"hi", method="blt-d", max_new_bytes=40, unmask="one-step")
    real, n = BLTState.decode_block, [0]

    def eos_in_second_block(*a, **k):
        logits = real(*a, **k)
        n[0] += 1
        if n[0] == 2:
            logits[0, 3, EOS_ID] = 1e4
        return logits

    monkeypatch.setattr(BLTState, "decode_block", eos_in_second_block)
    r = generate(m, b"hi", method="blt-d", max_new_bytes=40, unmask="one-step")
    assert r.stop_reason == "eos" and r.bytes == base.bytes[:11]


@pytest.mark.parametrize("method", ["blt-d", "blt-dv"])
def test_stop_string_inside_a_block_truncates(models, method):
    m = models[8]
    full = generate(m, b"hi", method=method, max_new_bytes=40)
    stop = full.bytes[9:12]
    r = generate(m, b"hi", method=method, max_new_bytes=40, stop=[stop])
    end = full.bytes.find(stop) + len(stop)
    assert r.stop_reason == "stop" and r.bytes == full.bytes[:end]
    if method == "blt-dv":
        assert r.bytes == generate(m, b"hi", method="blt", max_new_bytes=40, stop=[stop]).bytes


@pytest.mark.parametrize("method", ["blt-d", "blt-dv"])
def test_plain_model_gets_a_clear_error(method):
    plain = tiny_model()
    with pytest.raises(ValueError, match="diffusion_block_size = None.*blt-s"):
        generate(plain, b"hi", method=method, max_new_bytes=4)


@pytest.mark.parametrize("bad", [{"block_size": 0}, {"unmask": "random"}, {"alpha": -0.1}, {"gamma": -1.0},
                                 {"gamma": math.inf}, {"max_steps_per_block": 0}, {"schedule": "eager"},
                                 {"alpha": True}, {"block_size": 2.0}, {"unmask": None}, {"alpha": 10**400},
                                 {"draft_cutoff": -1.0}, {"draft_cutoff": math.nan}])
@pytest.mark.parametrize("n", [4, 0])
def test_invalid_options(models, bad, n):
    """Refused with the option's name, also when nothing would be generated (max_new_bytes = 0)."""
    with pytest.raises(ValueError, match=next(iter(bad))):
        generate(models[4], b"hi", method="blt-dv", max_new_bytes=n, **bad)


@pytest.mark.parametrize("bad", ["AR", "", None, 0, "ar ", "paper", ["ar"], True])
@pytest.mark.parametrize("n", [4, 0])
def test_invalid_first_slot(models, bad, n):
    with pytest.raises(ValueError, match="first_slot"):
        generate(models[4], b"hi", method="blt-d", max_new_bytes=n, first_slot=bad)


@pytest.mark.parametrize("method,rule", [("blt-d", {}), ("blt-d", {"unmask": "entropy"}), ("blt-dv", {})])
def test_seeded_sampling_is_reproducible(models, method, rule):
    m = models[8]
    kw = dict(method=method, max_new_bytes=30, temperature=1.0, top_k=50, **rule)
    a = generate(m, b"hi", seed=7, **kw)
    assert a.bytes == generate(m, b"hi", seed=7, **kw).bytes
    assert a.bytes != generate(m, b"hi", seed=8, **kw).bytes


# ----------------------------------------------------------------------------- CLI
def test_cli_diffusion_flags(tmp_path, capsysbinary, models):
    from fastblt.cli import main

    m = models[8]
    fastblt.save(m, tmp_path / "m")
    base = ["generate", "--model", str(tmp_path / "m"), "--max-new-bytes", "12", "--json"]
    assert main(base + ["--method", "blt-d", "--block-size", "4", "--unmask", "entropy", "--gamma", "0.5", "hi"]) == 0
    obj = json.loads(capsysbinary.readouterr().out)
    ref = generate(m, b"hi", method="blt-d", max_new_bytes=12, block_size=4, unmask="entropy", gamma=0.5)
    assert obj["text"] == ref.text and obj["stats"]["diffusion_steps"] == ref.stats["diffusion_steps"]
    assert main(base + ["--method", "blt-dv", "--schedule", "paper", "--alpha", "0.5", "hi"]) == 0
    obj = json.loads(capsysbinary.readouterr().out)
    assert obj["text"] == generate(m, b"hi", max_new_bytes=12).text and obj["stats"]["schedule"] == "paper"
    assert main(base + ["--method", "blt", "--block-size", "4", "hi"]) == 1  # blt takes no block size
    assert b"does not take --block-size" in capsysbinary.readouterr().err
    for bad in (["--block-size", "0"], ["--alpha", "-1"], ["--gamma", "nan"], ["--max-steps-per-block", "0"],
                ["--unmask", "all"]):
        with pytest.raises(SystemExit) as e:
            main(base + ["--method", "blt-d"] + bad + ["hi"])
        assert e.value.code != 0
    fastblt.save(tiny_model(), tmp_path / "plain")
    assert main(["generate", "--model", str(tmp_path / "plain"), "--method", "blt-d", "hi"]) != 0
    assert b"blt-s" in capsysbinary.readouterr().err


def test_blt_dv_single_byte_equals_blt_with_a_prompt():
    # regression: with max_new_bytes=1 no draft is made, and the verifier must read the last prompt row
    m = tiny_model(diffusion_block_size=4)
    for prompt in (b"hello world", b"x", b""):
        for schedule in ("fused", "paper"):
            want = generate(m, prompt, method="blt", max_new_bytes=1).bytes
            assert generate(m, prompt, method="blt-dv", max_new_bytes=1, schedule=schedule).bytes == want
            assert generate(m, prompt, method="blt-s", max_new_bytes=1, schedule=schedule).bytes == want
