"""Broken model folders and configs fail at load with one message naming file, field and value;
broken weights and non-finite logits never turn into silent output (issue: "no silent failures")."""
import json
import math
import struct

import numpy as np
import pytest
import torch

import fastblt
from fastblt.config import BLTConfig, ConfigError, PatchingConfig, StackConfig, preset

from helpers import tiny_model

NAN, INF = float("nan"), float("inf")

# Bad values per kind of field: (label, value). Every field gets every bad value of its kind.
POS_INT = [("string", "512"), ("float", 2.5), ("nan", NAN), ("inf", INF), ("bool", True), ("zero", 0), ("negative", -1)]
OPT_POS_INT = POS_INT  # None is allowed, everything above is not
POS_REAL = [("string", "1e-5"), ("nan", NAN), ("inf", INF), ("-inf", -INF), ("bool", True), ("zero", 0), ("negative", -1.0)]
REAL = [("string", "2.0"), ("nan", NAN), ("inf", INF), ("-inf", -INF), ("bool", True), ("null", None)]
BOOL = [("int", 1), ("string", "true"), ("null", None)]
CHOICE = [("int", 1), ("unknown", "nope"), ("null", None)]
NGRAMS = [("string", "3"), ("int", 3), ("empty", []), ("zero", [3, 0]), ("nan", [3, NAN]), ("bool", [True]), ("string item", ["3"])]

STACK_FIELDS = {"dim": POS_INT, "n_layers": POS_INT, "n_heads": POS_INT, "n_kv_heads": OPT_POS_INT,
                "ffn_dim": OPT_POS_INT, "rope_theta": POS_REAL, "norm_eps": POS_REAL, "window": OPT_POS_INT}
PATCHING_FIELDS = {"mode": CHOICE, "threshold": REAL, "rule": CHOICE, "monotonic_threshold": REAL,
                   "max_patch_length": OPT_POS_INT, "patch_size": POS_INT}
TOP_FIELDS = {"cross_attn_k": POS_INT, "encoder_cross_attn_all_layers": BOOL, "decoder_cross_attn_all_layers": BOOL,
              "hash_ngram_sizes": NGRAMS, "hash_vocab": POS_INT, "hash_functions": POS_INT, "double_residual": BOOL,
              "max_seq_len": POS_INT, "diffusion_block_size": OPT_POS_INT}


def _cases():
    for stack in ("encoder", "global_", "decoder", "entropy"):
        for name, bad in STACK_FIELDS.items():
            for label, v in bad:
                yield pytest.param((stack, name), v, id=f"{stack}.{name}-{label}")
    for name, bad in PATCHING_FIELDS.items():
        for label, v in bad:
            yield pytest.param(("patching", name), v, id=f"patching.{name}-{label}")
    for name, bad in TOP_FIELDS.items():
        for label, v in bad:
            yield pytest.param((name,), v, id=f"{name}-{label}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    fastblt.save(tiny_model(), d)
    return d


@pytest.fixture
def broken(folder, tmp_path):
    """A copy of the tiny model folder whose config.json ``edit(cfg)`` rewrites. Without ``weights``
    the copy has no model.safetensors: a bad config must fail before the weights are read (if it
    did not, the error would name the missing weights instead of the field)."""
    def make(edit, weights=False):
        d = tmp_path / "m"
        d.mkdir(exist_ok=True)
        if weights:
            (d / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
        cfg = json.loads((folder / "config.json").read_text())
        edit(cfg)
        (d / "config.json").write_text(json.dumps(cfg))  # NaN/Infinity as Python's json writes them
        return d
    return make


def _set(d, path, value):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


@pytest.mark.parametrize("path,value", list(_cases()))
def test_every_config_field_is_validated(broken, path, value):
    d = broken(lambda cfg: _set(cfg["blt"], path, value))
    with pytest.raises(ValueError) as e:
        fastblt.load(d)
    msg = str(e.value)
    assert str(d / "config.json") in msg
    assert "blt." + ".".join(path) in msg or f"blt.{path[0]}" in msg, msg  # the field (list items: its index)
    if not (isinstance(value, float) and math.isnan(value)):
        assert repr(value) in msg or any(repr(x) in msg for x in (value if isinstance(value, list) else [])), msg
    assert type(e.value) is ValueError  # the CLI prints it without a traceback


def test_issue_examples_in_our_format(broken):
    """The issue's list: NaN rope_theta / norm_eps / max_seq_len, norm_eps −1, window 0 / −1, n_kv_heads 0,
    ffn_dim "512", cross_attn_k NaN, strings for window / rope_theta / max_seq_len."""
    examples = [(("encoder", "rope_theta"), NAN), (("decoder", "norm_eps"), NAN), (("max_seq_len",), NAN),
                (("global_", "norm_eps"), -1), (("encoder", "window"), 0), (("decoder", "window"), -1),
                (("global_", "n_kv_heads"), 0), (("decoder", "ffn_dim"), "512"), (("cross_attn_k",), NAN),
                (("encoder", "window"), "64"), (("global_", "rope_theta"), "1e4"), (("max_seq_len",), "8192")]
    for path, value in examples:
        d = broken(lambda cfg, p=path, v=value: _set(cfg["blt"], p, v))
        with pytest.raises(ValueError, match="blt." + r"\.".join(path)):
            fastblt.load(d)


def test_structure_errors_name_the_field(broken):
    cases = [(lambda c: _set(c["blt"], ("encoder",), "big"), "blt.encoder = 'big': must be an object"),
             (lambda c: _set(c["blt"]["encoder"], ("heads",), 4), "blt.encoder.heads = 4: unknown field"),
             (lambda c: c["blt"]["decoder"].pop("dim"), "blt.decoder.dim = None: is missing"),
             (lambda c: _set(c["blt"], ("typo",), 1), "blt.typo = 1: unknown field"),
             (lambda c: _set(c, ("format_version",), "1"), "format_version = '1': must be an integer"),
             (lambda c: c.pop("blt"), "blt = None: is missing"),
             (lambda c: _set(c["blt"]["encoder"], ("n_heads",), 3), "blt.encoder.n_heads = 3: must divide dim 32")]
    for edit, want in cases:
        with pytest.raises(ValueError, match=want.replace("(", r"\(").replace(".", r"\.")):
            fastblt.load(broken(edit))


@pytest.mark.parametrize("key,value,field", [
    ("encoder_config.rms_norm_eps", NAN, "encoder_config.rms_norm_eps (our encoder.norm_eps) = nan"),
    ("decoder_config.hidden_size", "512", "decoder_config.hidden_size (our decoder.dim) = '512'"),
    ("global_config.num_key_value_heads", 0, "global_config.num_key_value_heads (our global_.n_kv_heads) = 0"),
    ("local_attention_window_len", 0, "local_attention_window_len (our encoder.window) = 0"),
    ("cross_attn_k", NAN, "cross_attn_k = nan"),
    ("encoder_config.max_position_embeddings", NAN, "encoder_config.max_position_embeddings (our max_seq_len) = nan"),
    ("patching_threshold", "x", "patching_threshold (our patching.threshold) = 'x'"),
    ("global_config.rope_parameters", {"rope_theta": "1e4"}, "global_config.rope_theta (our global_.rope_theta) = '1e4'"),
])
def test_hf_config_errors_name_the_hf_field(tmp_path, key, value, field):
    model = tiny_model()
    model.cfg.double_residual = True
    fastblt.save_hf(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    _set(cfg, key.split("."), value)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        fastblt.load(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value) and field in str(e.value), str(e.value)


def test_python_configs_validate_too():
    with pytest.raises(ConfigError, match=r"norm_eps = -1: must be > 0"):
        StackConfig(dim=32, n_layers=1, n_heads=2, norm_eps=-1)
    with pytest.raises(ConfigError, match="window"):
        preset("tiny", encoder=StackConfig(dim=32, n_layers=1, n_heads=2, window=0))
    with pytest.raises(ConfigError, match="threshold = nan"):
        PatchingConfig(threshold=NAN)
    # numpy scalars are numbers: accepted and stored as Python numbers
    s = StackConfig(dim=np.int64(32), n_layers=np.int32(1), n_heads=2, rope_theta=np.float32(1e4))
    assert type(s.dim) is int and type(s.rope_theta) is float
    for name in ("tiny", "small", "1b", "3b"):  # presets survive the JSON round trip
        cfg = preset(name)
        assert BLTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---------------------------------------------------------------------------- broken folders and files
def test_config_json_that_is_a_folder(broken):
    d = broken(lambda c: None)
    (d / "config.json").unlink()
    (d / "config.json").mkdir()
    with pytest.raises(ValueError, match=f"{d / 'config.json'} is not a file"):
        fastblt.load(d)


def test_unreadable_config_and_weights(broken, monkeypatch):
    d = broken(lambda c: None, weights=True)
    real = type(d).read_bytes

    def deny(self):
        if self.name == "config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(type(d), "read_bytes", deny)
    with pytest.raises(ValueError, match=f"{d / 'config.json'} cannot be read: Permission denied"):
        fastblt.load(d)
    monkeypatch.undo()
    import os
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).endswith("model.safetensors") else real_access(p, m))
    with pytest.raises(ValueError, match=f"{d / 'model.safetensors'} cannot be read: permission denied"):
        fastblt.load(d)


def test_weights_that_are_a_folder(broken):
    d = broken(lambda c: None)
    (d / "model.safetensors").mkdir()
    with pytest.raises(ValueError, match="model.safetensors is not a file"):
        fastblt.load(d)


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_weights_refused_unless_skipped(tmp_path, bad):
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight[3, 5] = bad
    fastblt.save(model, tmp_path)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor lm_head\.weight holds 1 non-finite"):
        fastblt.load(tmp_path)
    assert fastblt.load(tmp_path, check_weights=False) is not None  # the flag for very large models


def test_corrupted_weight_bytes_are_caught(folder, tmp_path):
    """Overwrite the first tensor's data with 0xFF bytes (a NaN pattern in float32) in place."""
    data = bytearray((folder / "model.safetensors").read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name, info = next((k, v) for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    start = 8 + n + info["data_offsets"][0]
    data[start:start + 64] = b"\xff" * 64
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"tensor {name} holds 16 non-finite"):
        fastblt.load(tmp_path)


# ---------------------------------------------------------------------------- generation
@pytest.mark.parametrize("method", ["blt", "blt-uncached", "blt-s", "blt-d", "blt-dv"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_non_finite_logits_raise_instead_of_eos(method, temperature):
    model = tiny_model(diffusion_block_size=4)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite logits"):
        fastblt.generate(model, "abc", method=method, max_new_bytes=8, temperature=temperature, seed=0)
