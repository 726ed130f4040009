"""The released BLT layout (bytelatent names, entropy_model/): load, convert, generate, bad input.

The release folders here are built from random transformers ``BltForCausalLM`` models by the
inverse of transformers' own converter rules (written out below, independent of fastblt.release),
so the loader is checked against names it did not produce.
"""
import json
import math

import pytest
import torch

import fastblt
from fastblt.cli import main as cli

from helpers import midpoint_threshold, random_ids

transformers = pytest.importorskip("transformers")

# transformers' converter renames (bytelatent → HF), inverted here: HF segment → bytelatent segment.
HF_TO_RELEASE = {"self_attn": "attention", "mlp": "feed_forward", "input_layernorm": "attention_norm",
                 "post_attention_layernorm": "ffn_norm", "embed_tokens": "tok_embeddings",
                 "q_norm": "cross_attn_norm_q", "k_norm": "cross_attn_norm_kv", "gate_proj": "w1",
                 "down_proj": "w2", "up_proj": "w3", "q_proj": "wq", "k_proj": "wk", "v_proj": "wv",
                 "o_proj": "wo", "lm_head": "output"}


def release_ffn(dim, multiple_of, mult):
    """bytelatent FeedForward hidden size for hidden_dim = 4·dim."""
    h = int(2 * (4 * dim) / 3)
    if mult is not None:
        h = int(mult * h)
    return multiple_of * math.ceil(h / multiple_of)


def hf_model(k=2, enc_layers=1, dec_layers=2, ngrams=(3, 4), hash_vocab=101, enc_all=False, dec_all=True, d_local=32,
             d_global=64, heads=2, kv_heads=None, window=512, multiple_of=32, mult=1.0, n_functions=1):
    ffn = lambda d: release_ffn(d, multiple_of, mult)  # noqa: E731
    cfg = transformers.BltConfig(
        encoder_hash_byte_group_vocab=hash_vocab, encoder_hash_byte_group_size=list(ngrams), cross_attn_k=k,
        encoder_hash_byte_group_nb_functions=n_functions, local_attention_window_len=window,
        patcher_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=release_ffn(32, 256, None)),
        encoder_config=dict(hidden_size=d_local, num_hidden_layers=enc_layers, num_attention_heads=heads, cross_attn_k=k,
                            hidden_size_global=d_global, intermediate_size=ffn(d_local), cross_attn_all_layers=enc_all),
        decoder_config=dict(hidden_size=d_local, num_hidden_layers=dec_layers, num_attention_heads=heads, cross_attn_k=k,
                            hidden_size_global=d_global, intermediate_size=ffn(d_local), cross_attn_all_layers=dec_all),
        global_config=dict(hidden_size=d_global, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv_heads,
                           intermediate_size=ffn(d_global)))
    return transformers.BltForCausalLM(cfg).eval()


def write_release(hf, path, kw, threshold):
    """A release-layout folder holding ``hf``'s weights under bytelatent names."""
    c = hf.config
    args = {  # a subset of ByteLatentTransformerArgs.model_dump(), as the released config.json holds
        "vocab_size": 260, "dim": 512, "n_layers": 8, "n_heads": 8, "patch_in_forward": True, "dim_token": None,
        "dim_global": kw.get("d_global", 64), "dim_local_decoder": kw.get("d_local", 32),
        "dim_local_encoder": kw.get("d_local", 32), "n_layers_global": 2, "n_layers_local_decoder": kw.get("dec_layers", 2),
        "n_layers_local_encoder": kw.get("enc_layers", 1), "patch_size": 4.5, "patching_mode": "entropy",
        "patching_threshold": None, "max_encoder_seq_length": 24576, "max_seqlen": 4096,
        "use_local_encoder_transformer": True, "cross_attn_encoder": True, "cross_attn_decoder": True,
        "cross_attn_window_encoder": None, "cross_attn_window_decoder": None, "cross_attn_k": kw.get("k", 2),
        "cross_attn_nheads": kw.get("heads", 2), "cross_attn_all_layers_decoder": kw.get("dec_all", True),
        "cross_attn_all_layers_encoder": kw.get("enc_all", False), "cross_attn_use_flex_attention": True,
        "cross_attn_init_by_pooling": True, "encoder_hash_byte_group_size": list(kw.get("ngrams", (3, 4))),
        "encoder_hash_byte_group_vocab": kw.get("hash_vocab", 101),
        "encoder_hash_byte_group_nb_functions": kw.get("n_functions", 1), "rope_theta": 500000.0, "norm_eps": 1e-5,
        "multiple_of": kw.get("multiple_of", 32), "ffn_dim_multiplier": kw.get("mult", 1.0),
        "downsampling_by_pooling": "max", "n_heads_global": 4, "n_heads_local_decoder": kw.get("heads", 2),
        "n_heads_local_encoder": kw.get("heads", 2), "n_kv_heads": None, "n_kv_heads_global": kw.get("kv_heads"),
        "local_attention_window_len": kw.get("window", 512), "share_encoder_decoder_emb": True,
        "encoder_enable_byte_ngrams": False, "weight_tying": False, "use_rope": True, "non_linearity": "swiglu",
        "norm_type": "rmsnorm", "pm_size": 0, "head_dim": None,
    }
    params = {"entropy_model": {"dim": 32, "n_layers": 2, "n_heads": 2, "max_seqlen": 8192, "vocab_size": 260,
                                "ffn_dim_multiplier": None, "sliding_window": 512, "rope_theta": 10000.0,
                                "attn_bias_type": "local_block_causal", "attn_impl": "xformers"},
              "data": {"patcher_args": {"patching_mode": "byte", "threshold": threshold, "max_patch_length": None,
                                        "monotonicity": False, "threshold_add": None}}}
    main, entropy = {}, {}
    rename = lambda name: ".".join(HF_TO_RELEASE.get(p, p) for p in name.split("."))  # noqa: E731
    for name, t in hf.state_dict().items():
        t = t.detach().clone()
        if name == "lm_head.weight":
            main["local_decoder.output.weight"] = t
        elif name == "model.encoder_hash_tok_embedding.weight":
            for i, table in enumerate(t.split(c.encoder_hash_byte_group_vocab)):
                main[f"encoder_hash_tok_embedding.{i}.weight"] = table.contiguous()
        elif name.startswith("model.patcher."):
            entropy[rename(name[len("model.patcher."):])] = t
        else:
            main[rename(name[len("model."):])] = t
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"args": args}))
    from safetensors.torch import save_file

    save_file(main, str(path / "model.safetensors"))
    (path / "entropy_model").mkdir()
    (path / "entropy_model" / "params.json").write_text(json.dumps(params))
    torch.save({"model": entropy}, path / "entropy_model" / "consolidated.pth")
    return main, entropy


SHAPES = [
    dict(),
    dict(k=3, dec_layers=3, ngrams=(3, 4, 5, 6, 7, 8), hash_vocab=500, enc_layers=2, multiple_of=64, mult=0.75),
    dict(enc_all=True),  # 1 encoder layer: all-layers cross-attention is the released semantics
    dict(k=1, d_global=48, dec_layers=1, ngrams=(5,), hash_vocab=37, dec_all=False),  # global input projection
    dict(k=4, d_global=128, window=64, kv_heads=2, n_functions=2, heads=4),  # window < sequence, GQA, 2 hash functions
]


def release_folder(tmp_path, kw, seed=0):
    torch.manual_seed(seed)
    hf = hf_model(**kw)
    with torch.no_grad():
        ent, _, _ = hf.model.patcher(random_ids(200, seed=99), patch_size=4, threshold=1.0)
    threshold = midpoint_threshold(ent)
    hf.config.patching_threshold = threshold
    write_release(hf, tmp_path / "release", kw, threshold)
    return hf, tmp_path / "release"


@pytest.mark.parametrize("kw", SHAPES)
def test_release_layout_loads_three_ways(tmp_path, kw):
    hf, rel = release_folder(tmp_path, kw)
    ids = random_ids(300, batch=2, seed=1)
    with torch.no_grad():
        want = hf(ids, use_cache=False).logits
        direct = fastblt.load(rel)
        assert (direct(ids) - want).abs().max().item() <= 1e-4
        assert len(set(fastblt.patching.patches.patch_lengths(direct.patch_starts(ids))[0].tolist())) > 2
        assert cli(["convert", str(rel), str(tmp_path / "hf"), "--to", "hf"]) == 0
        via_hf = transformers.BltForCausalLM.from_pretrained(tmp_path / "hf").eval()
        assert (via_hf(ids, use_cache=False).logits - want).abs().max().item() <= 1e-4
        assert cli(["convert", str(rel), str(tmp_path / "ours"), "--to", "fastblt"]) == 0
        ours = fastblt.load(tmp_path / "ours")
        assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "fastblt"
        assert (ours(ids) - want).abs().max().item() <= 1e-4
    assert ours.cfg == direct.cfg


def test_release_round_trip_keeps_names_and_weights(tmp_path):
    hf, rel = release_folder(tmp_path, SHAPES[1])
    from safetensors.torch import load_file

    assert cli(["convert", str(rel), str(tmp_path / "ours"), "--to", "fastblt"]) == 0
    assert cli(["convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--to", "release"]) == 0
    a, b = load_file(str(rel / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ea = torch.load(rel / "entropy_model" / "consolidated.pth", weights_only=True)["model"]
    eb = torch.load(tmp_path / "back" / "entropy_model" / "consolidated.pth", weights_only=True)["model"]
    assert set(ea) == set(eb) and all(torch.equal(ea[k], eb[k]) for k in ea)
    assert fastblt.load(tmp_path / "back").cfg == fastblt.load(rel).cfg


def test_release_generates_lossless_methods_equal_to_blt(tmp_path):
    _, rel = release_folder(tmp_path, SHAPES[0])
    model = fastblt.load(rel)
    ref = fastblt.generate(model, b"def f(x):", method="blt", max_new_bytes=40, ignore_eos=True)
    assert len(ref.bytes) == 40
    for method, kw in [("blt-uncached", {}), ("blt-s", {"draft_length": 4, "schedule": "paper"}),
                       ("blt-s", {"draft_length": 8, "schedule": "fused"})]:
        out = fastblt.generate(model, b"def f(x):", method=method, max_new_bytes=40, ignore_eos=True, **kw)
        assert out.bytes == ref.bytes, (method, kw)


def test_patching_fields_and_defaults(tmp_path):
    _, rel = release_folder(tmp_path, SHAPES[0])
    params = json.loads((rel / "entropy_model" / "params.json").read_text())
    params["data"]["patcher_args"] = {"patching_mode": "byte", "max_patch_length": 6}
    (rel / "entropy_model" / "params.json").write_text(json.dumps(params))
    m = fastblt.load(rel)  # threshold absent everywhere: the bytelatent default
    assert m.cfg.patching.threshold == 1.335442066192627 and m.cfg.patching.max_patch_length == 6
    cfg = json.loads((rel / "config.json").read_text())
    cfg["args"]["patching_threshold"] = 2.5
    (rel / "config.json").write_text(json.dumps(cfg))
    assert fastblt.load(rel).cfg.patching.threshold == 2.5  # config.json's when params.json has none
    del params["entropy_model"]["sliding_window"]
    (rel / "entropy_model" / "params.json").write_text(json.dumps(params))
    assert fastblt.load(rel).cfg.entropy.window == 512  # as the official loader


def test_release_bad_inputs_name_file_and_field(tmp_path):
    import shutil

    _, rel = release_folder(tmp_path, SHAPES[0])
    # missing entropy_model/
    no_ent = tmp_path / "no_ent"
    shutil.copytree(rel, no_ent)
    shutil.rmtree(no_ent / "entropy_model")
    with pytest.raises(FileNotFoundError, match="entropy_model"):
        fastblt.load(no_ent)
    # params.json of another model family (a Llama-style params.json)
    other = tmp_path / "other"
    shutil.copytree(rel, other)
    (other / "entropy_model" / "params.json").write_text(json.dumps({"dim": 4096, "n_layers": 32, "vocab_size": 128256}))
    with pytest.raises(ValueError, match=r"params\.json.*entropy_model"):
        fastblt.load(other)
    params = json.loads((rel / "entropy_model" / "params.json").read_text())
    params["entropy_model"]["vocab_size"] = 32000
    (other / "entropy_model" / "params.json").write_text(json.dumps(params))
    with pytest.raises(ValueError, match=r"params\.json entropy_model field vocab_size = 32000"):
        fastblt.load(other)
    # consolidated.pth holding a non-tensor object: refused by weights_only, nothing executed
    evil = tmp_path / "evil"
    shutil.copytree(rel, evil)
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Custom()}, evil / "entropy_model" / "consolidated.pth")
    with pytest.raises(ValueError, match=r"consolidated\.pth.*weights_only"):
        fastblt.load(evil)
    assert not _Custom.unpickled
    torch.save({"model": {"w": [1, 2]}}, evil / "entropy_model" / "consolidated.pth")
    with pytest.raises(ValueError, match=r"consolidated\.pth.*not tensors"):
        fastblt.load(evil)
    # config fields that disagree with the tensors
    bad = tmp_path / "bad"
    shutil.copytree(rel, bad)
    cfg = json.loads((rel / "config.json").read_text())
    cfg["args"]["dim_global"] = 96
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor global_transformer\.\S+ has shape .*dim_global"):
        fastblt.load(bad)
    cfg["args"].update(dim_global=64, encoder_hash_byte_group_vocab=55)
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"encoder_hash_tok_embedding\.0\.weight.*encoder_hash_byte_group_vocab"):
        fastblt.load(bad)
    cfg["args"].update(encoder_hash_byte_group_vocab=101, n_layers_local_decoder=5)
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"n_layers_.*missing .*local_decoder\.(cross_attn_)?layers\.2"):
        fastblt.load(bad)
    params = json.loads((rel / "entropy_model" / "params.json").read_text())
    params["entropy_model"]["dim"] = 48
    (bad / "config.json").write_text((rel / "config.json").read_text())
    (bad / "entropy_model" / "params.json").write_text(json.dumps(params))
    with pytest.raises(ValueError, match=r"consolidated\.pth: tensor \S+ has shape .*entropy_model\.dim"):
        fastblt.load(bad)
    # an architecture we do not implement: named field
    cfg["args"].update(n_layers_local_decoder=2, downsampling_by_pooling="avg")
    (bad / "entropy_model" / "params.json").write_text((rel / "entropy_model" / "params.json").read_text())
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="downsampling_by_pooling = 'avg'"):
        fastblt.load(bad)
    # bytelatent's accumulating encoder cross-attention over several layers: refused, not misread
    cfg["args"].update(downsampling_by_pooling="max", cross_attn_all_layers_encoder=True, n_layers_local_encoder=2)
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="cross_attn_all_layers_encoder = True"):
        fastblt.load(bad)


class _Custom:
    unpickled = False

    def __reduce__(self):
        return (_mark, ())


def _mark():
    _Custom.unpickled = True
    return None


def test_convert_refuses_existing_destination(tmp_path, capsys):
    _, rel = release_folder(tmp_path, SHAPES[0])
    assert cli(["convert", str(rel), str(rel), "--to", "fastblt"]) == 1
    assert "exists" in capsys.readouterr().err
