"""The BLT model: parity with transformers' BltForCausalLM, causality, round trips, bad input."""
import json

import pytest
import torch

import fastblt
from fastblt.config import PAPER_COUNTS, preset
from fastblt.model.params import breakdown_for_config
from fastblt.patching import patches as P

from helpers import midpoint_threshold, random_ids, tiny_model

transformers = pytest.importorskip("transformers")


def hf_model(k=2, enc_layers=1, dec_layers=2, ngrams=(3, 4), hash_vocab=101, enc_all=False, d_local=32,
             d_global=64, max_patch_length=None, window=512, kv_heads=None):
    cfg = transformers.BltConfig(
        encoder_hash_byte_group_vocab=hash_vocab, encoder_hash_byte_group_size=list(ngrams), cross_attn_k=k,
        max_patch_length=max_patch_length, local_attention_window_len=window,
        patcher_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        encoder_config=dict(hidden_size=d_local, num_hidden_layers=enc_layers, num_attention_heads=2, cross_attn_k=k,
                            hidden_size_global=d_global, intermediate_size=64, cross_attn_all_layers=enc_all),
        decoder_config=dict(hidden_size=d_local, num_hidden_layers=dec_layers, num_attention_heads=2, cross_attn_k=k,
                            hidden_size_global=d_global, intermediate_size=64),
        global_config=dict(hidden_size=d_global, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=kv_heads, intermediate_size=128))
    return transformers.BltForCausalLM(cfg).eval()


def hf_and_ours(tmp_path, ids, **kw):
    hf = hf_model(**kw)
    with torch.no_grad():
        ent, _, _ = hf.model.patcher(ids[:1], patch_size=4, threshold=1.0)
    hf.config.patching_threshold = midpoint_threshold(ent)  # so that patch lengths vary
    hf.save_pretrained(tmp_path)
    return hf, fastblt.load(tmp_path)


SHAPES = [
    dict(),
    dict(k=3, dec_layers=3, ngrams=(3, 4, 5, 6, 7, 8), hash_vocab=500, enc_all=True, enc_layers=2),
    dict(k=1, d_global=48, dec_layers=1, ngrams=(5,), hash_vocab=37),  # global input projection (32 != 48)
    dict(k=4, d_global=128, window=64, kv_heads=2),  # sliding window shorter than the sequence, GQA
]


@pytest.mark.parametrize("kw", SHAPES)
def test_logits_and_patches_equal_transformers(tmp_path, kw):
    ids = random_ids(499, batch=3, seed=1)
    hf, ours = hf_and_ours(tmp_path, ids, **kw)
    with torch.no_grad():
        for row in range(3):  # per row: patch lengths
            x = ids[row : row + 1]
            _, hf_len, _ = hf.model.patcher(x, patch_size=4, threshold=hf.config.patching_threshold)
            assert torch.equal(P.patch_lengths(ours.patch_starts(x)), hf_len)
            assert len(set(hf_len[0].tolist())) > 2  # patches really vary
        a = hf(ids, use_cache=False).logits
        b = ours(ids)
    assert a.shape == b.shape == (3, 500, 260)
    assert (a - b).abs().max().item() <= 1e-4


def test_max_patch_length_matches_transformers_except_trailing_next_byte(tmp_path):
    # transformers drops the zero-length "next byte" patch when splitting long patches, so only the
    # last position may read an older latent there; every other position and patch must agree.
    ids = random_ids(300, seed=2)
    hf, ours = hf_and_ours(tmp_path, ids, max_patch_length=3)
    with torch.no_grad():
        a, b = hf(ids, use_cache=False).logits, ours(ids)
        _, hf_len, _ = hf.model.patcher(ids, patch_size=4, threshold=hf.config.patching_threshold, max_patch_length=3)
    ours_len = P.patch_lengths(ours.patch_starts(ids))
    assert torch.equal(ours_len[ours_len > 0], hf_len[hf_len > 0])
    assert (a[:, :-1] - b[:, :-1]).abs().max().item() <= 1e-4


def test_hf_round_trip(tmp_path):
    ids = random_ids(120, batch=2, seed=3)
    hf, ours = hf_and_ours(tmp_path / "a", ids, k=2)
    fastblt.save_hf(ours, tmp_path / "b")
    back = transformers.BltForCausalLM.from_pretrained(tmp_path / "b").eval()
    with torch.no_grad():
        assert (back(ids, use_cache=False).logits - ours(ids)).abs().max().item() <= 1e-4


def test_own_format_round_trip(tmp_path):
    m = tiny_model(diffusion_block_size=4)
    fastblt.save(m, tmp_path)
    m2 = fastblt.load(tmp_path)
    ids = random_ids(80)
    assert m2.cfg == m.cfg
    assert torch.equal(m(ids), m2(ids))


def test_perturbing_a_byte_leaves_earlier_logits_unchanged():
    m = tiny_model()
    ids = random_ids(150, seed=4)
    base = m(ids)
    for j in (5, 40, 149):
        x = ids.clone()
        x[0, j] = 4 + (int(x[0, j]) - 4 + 97) % 256
        out = m(x)
        assert (out[:, :j] - base[:, :j]).abs().max().item() <= 1e-5
        assert (out[:, j:] - base[:, j:]).abs().max().item() > 1e-4


def test_bad_inputs_raise_clear_errors():
    m = tiny_model()
    with pytest.raises(ValueError, match="integer"):
        m(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="shape"):
        m(torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 260\)"):
        m(torch.tensor([[1, 300]]))
    with pytest.raises(ValueError, match="empty"):
        m(torch.ones(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.ones(1, m.cfg.max_seq_len + 1, dtype=torch.long))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastblt.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        fastblt.load(tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="llama"):
        fastblt.load(other)
    (other / "config.json").write_text(json.dumps({"model_type": "fastblt"}))
    with pytest.raises(ValueError, match=r"other/config\.json: blt = None: is missing"):
        fastblt.load(other)
    good = tmp_path / "good"
    fastblt.save(tiny_model(), good)
    data = (good / "model.safetensors").read_bytes()
    (good / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        fastblt.load(good)


def test_paper_presets_match_reported_counts():
    for name, want in PAPER_COUNTS.items():
        got = breakdown_for_config(preset(name))
        for comp, n in want.items():
            assert abs(got[comp] - n) / n < 0.05, (name, comp, got[comp], n)


def test_tiny_and_small_sizes():
    tiny = sum(breakdown_for_config(preset("tiny")).values())
    small = breakdown_for_config(preset("small"))
    assert tiny < 1_000_000
    assert 5e6 <= sum(small.values()) <= 20e6
