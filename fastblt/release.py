"""The released BLT layout: ``facebook/blt-1b`` / ``blt-7b`` as Meta published them with the original
``bytelatent`` code (Pagnoni et al., arXiv 2412.09871), read and written without that code.

A release folder holds:
- ``config.json``: ``{"args": {...}}``, the model's ``ByteLatentTransformerArgs`` field names;
- ``model.safetensors``: bytelatent tensor names (``local_encoder.layers.0.attention.wq.weight``,
  ``...feed_forward.w1.weight``, ``local_decoder.output.weight``, one hash table per (function, n):
  ``encoder_hash_tok_embedding.{i}.weight`` [vocab, d_local]);
- ``entropy_model/params.json``: the entropy model's training arguments (``{"entropy_model": {...},
  "data": {"patcher_args": {...}}}``);
- ``entropy_model/consolidated.pth``: the entropy model's weights, read with
  ``torch.load(weights_only=True)`` only (never unpickling arbitrary objects).

Tensor names map one path segment at a time to ours (``attention`` → ``self_attn``, ``w1`` →
``gate_proj``, ...); the hash tables are fused into one embedding (table i owns rows
[i·vocab, (i+1)·vocab), the order of :mod:`fastblt.model.hashing`); ``local_decoder.output`` is our
top-level ``lm_head``; the entropy model lives under ``patcher.``.

Fields read (absent → the bytelatent default, :data:`ARGS_DEFAULTS` / :data:`ENTROPY_DEFAULTS`;
patching: :func:`patching_from_release`) are listed in the README ("Use the released BLT weights").
Architectures fastblt does not implement (no cross-attention encoder, average pooling, byte n-gram
tables, cross-attention windows, ...) are refused with an error that names the field.
"""
from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .config import VOCAB_SIZE, BLTConfig, PatchingConfig, StackConfig
from .model.blt import BLT

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
ENTROPY_DIR, PARAMS_NAME, ENTROPY_WEIGHTS = "entropy_model", "params.json", "consolidated.pth"

# bytelatent defaults (ByteLatentTransformerArgs / BaseTransformerArgs) for the fields we read.
ARGS_DEFAULTS: dict[str, Any] = {
    "vocab_size": -1, "pm_size": 0,
    "dim_local_encoder": 512, "dim_global": 512, "dim_local_decoder": 512,
    "n_layers_local_encoder": 8, "n_layers_global": 8, "n_layers_local_decoder": 8,
    "n_heads_local_encoder": 8, "n_heads_global": 8, "n_heads_local_decoder": 8,
    "n_kv_heads": None, "n_kv_heads_global": None, "head_dim": None,
    "multiple_of": 256, "ffn_dim_multiplier": 1.0, "norm_eps": 1e-5, "rope_theta": 10000.0,
    "local_attention_window_len": None, "max_encoder_seq_length": None, "max_seqlen": 1024,
    "cross_attn_encoder": False, "cross_attn_decoder": False, "cross_attn_init_by_pooling": False,
    "downsampling_by_pooling": None, "cross_attn_k": None, "cross_attn_nheads": None,
    "cross_attn_all_layers_encoder": False, "cross_attn_all_layers_decoder": False,
    "cross_attn_window_encoder": None, "cross_attn_window_decoder": None,
    "use_local_encoder_transformer": False, "share_encoder_decoder_emb": True, "dim_token": None,
    "encoder_hash_byte_group_size": None, "encoder_hash_byte_group_vocab": 30000,
    "encoder_hash_byte_group_nb_functions": 3, "encoder_enable_byte_ngrams": False,
    "weight_tying": False, "use_rope": True, "non_linearity": "swiglu", "norm_type": "rmsnorm",
    "patching_mode": None, "patching_threshold": None, "patching_threshold_add": None,
    "monotonicity": False, "max_patch_length": None,
}
# LMTransformerArgs defaults; the official loader always uses a 512-byte sliding window.
ENTROPY_DEFAULTS: dict[str, Any] = {
    "vocab_size": -1, "dim": 512, "n_layers": 8, "n_heads": None, "n_kv_heads": None, "head_dim": None,
    "multiple_of": 256, "ffn_dim_multiplier": None, "norm_eps": 1e-5, "rope_theta": 10000.0,
    "sliding_window": 512, "max_seqlen": 1024,
}
PATCHER_DEFAULTS: dict[str, Any] = {"threshold": 1.335442066192627, "max_patch_length": None,
                                    "monotonicity": False, "threshold_add": None}

# One path segment at a time: bytelatent name → ours (= transformers' Blt names without "model.").
SEGMENTS = {
    "attention": "self_attn", "feed_forward": "mlp", "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm", "tok_embeddings": "embed_tokens",
    "cross_attn_norm_q": "q_norm", "cross_attn_norm_kv": "k_norm",
    "wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj",
    "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj", "output": "lm_head",
}
_BACK = {v: k for k, v in SEGMENTS.items()}
_HASH = "encoder_hash_tok_embedding"


def is_release_config(raw: Any) -> bool:
    """True for a release ``config.json``: an ``args`` object and no ``model_type``."""
    return isinstance(raw, dict) and "model_type" not in raw and isinstance(raw.get("args"), dict)


# ---------------------------------------------------------------------------- config
class _Fields:
    """Typed reads of one JSON object, with errors naming the file and field."""

    def __init__(self, d: dict[str, Any], defaults: dict[str, Any], where: str):
        self.d, self.defaults, self.where = d, defaults, where

    def get(self, key: str) -> Any:
        return self.d[key] if key in self.d else self.defaults.get(key)

    def int(self, key: str, optional: bool = False) -> int | None:
        v = self.get(key)
        if v is None and optional:
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{self.where} field {key} must be an integer >= 1, got {v!r}")
        return v

    def float(self, key: str) -> float:
        v = self.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{self.where} field {key} must be a finite number, got {v!r}")
        return float(v)

    def require(self, key: str, ok: bool, want: str) -> None:
        if not ok:
            absent = "" if key in self.d else " (absent: the bytelatent default)"
            raise ValueError(f"{self.where} field {key} = {self.get(key)!r}{absent}: fastblt reads the released "
                             f"BLT architecture, which needs {want}")


def _ffn_dim(dim: int, multiple_of: int, multiplier: float | None) -> int:
    """bytelatent's SwiGLU hidden size: int(2·4·dim/3), times the multiplier, rounded up to multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _entropy_stack(params: dict[str, Any], where: str) -> StackConfig:
    if not isinstance(params.get("entropy_model"), dict):
        raise ValueError(f"{where} has no 'entropy_model' object: it is not the params.json of a BLT entropy "
                         f"model (another model family?)")
    e = _Fields(params["entropy_model"], ENTROPY_DEFAULTS, f"{where} entropy_model")
    e.require("vocab_size", e.get("vocab_size") == VOCAB_SIZE, f"vocab_size {VOCAB_SIZE} (256 bytes + 4 specials)")
    dim, heads = e.int("dim"), e.int("n_heads")
    e.require("head_dim", e.get("head_dim") in (None, dim // heads), "head_dim = dim / n_heads")
    mult = e.get("ffn_dim_multiplier")
    return StackConfig(dim=dim, n_layers=e.int("n_layers"), n_heads=heads, n_kv_heads=e.int("n_kv_heads", True),
                       ffn_dim=_ffn_dim(dim, e.int("multiple_of"), None if mult is None else e.float("ffn_dim_multiplier")),
                       rope_theta=e.float("rope_theta"), norm_eps=e.float("norm_eps"),
                       window=e.int("sliding_window", True) or ENTROPY_DEFAULTS["sliding_window"])


def patching_from_release(args: dict[str, Any], params: dict[str, Any], where: str) -> PatchingConfig:
    """Patching rule: entropy patching (config.json ``args.patching_mode`` must be absent, null or
    "entropy"); threshold, max_patch_length, monotonicity and threshold_add from params.json
    ``data.patcher_args`` (as transformers' converter reads them), else config.json ``args.patching_threshold``
    / ``max_patch_length`` / ``monotonicity`` / ``patching_threshold_add``, else the bytelatent
    defaults (θ = 1.335442066192627 nats, no max length, global rule). The patcher_args'
    ``patching_mode`` describes the entropy model's own training data and is not read."""
    mode = args.get("patching_mode")
    if mode not in (None, "entropy"):
        raise ValueError(f"{where}/{CONFIG_NAME} field patching_mode = {mode!r}: only entropy patching is supported "
                         f"for released models")
    data = params.get("data") if isinstance(params.get("data"), dict) else {}
    pa = data.get("patcher_args") if isinstance(data.get("patcher_args"), dict) else {}
    from_args = {"threshold": "patching_threshold", "max_patch_length": "max_patch_length",
                 "monotonicity": "monotonicity", "threshold_add": "patching_threshold_add"}
    merged = {k: pa[k] if pa.get(k) is not None else args.get(from_args[k]) for k in PATCHER_DEFAULTS}
    f = _Fields({k: v for k, v in merged.items() if v is not None}, PATCHER_DEFAULTS,
                f"{where}/{ENTROPY_DIR}/{PARAMS_NAME} data.patcher_args (or {CONFIG_NAME} args)")
    f.require("monotonicity", f.get("monotonicity") is False, "the global threshold rule (monotonicity false)")
    f.require("threshold_add", f.get("threshold_add") is None, "no threshold_add")
    return PatchingConfig(mode="entropy", threshold=f.float("threshold"), max_patch_length=f.int("max_patch_length", True))


def config_from_release(args: dict[str, Any], params: dict[str, Any], where: str | os.PathLike = "release") -> BLTConfig:
    """BLTConfig from a release ``config.json`` ``args`` object and ``entropy_model/params.json``.

    Raises ValueError naming the file and field for a missing/ill-typed value or an architecture
    fastblt does not implement.
    """
    where = str(where)
    a = _Fields(args, ARGS_DEFAULTS, f"{where}/{CONFIG_NAME} args")
    need = [("vocab_size", a.get("vocab_size") == VOCAB_SIZE, f"vocab_size {VOCAB_SIZE}"),
            ("pm_size", a.get("pm_size") in (0, None), "pm_size 0"),
            ("cross_attn_encoder", a.get("cross_attn_encoder") is True, "cross_attn_encoder true"),
            ("cross_attn_decoder", a.get("cross_attn_decoder") is True, "cross_attn_decoder true"),
            ("cross_attn_init_by_pooling", a.get("cross_attn_init_by_pooling") is True, "cross_attn_init_by_pooling true"),
            ("downsampling_by_pooling", a.get("downsampling_by_pooling") == "max", "downsampling_by_pooling 'max'"),
            ("cross_attn_window_encoder", a.get("cross_attn_window_encoder") is None, "no cross-attention window"),
            ("cross_attn_window_decoder", a.get("cross_attn_window_decoder") is None, "no cross-attention window"),
            ("encoder_enable_byte_ngrams", not a.get("encoder_enable_byte_ngrams"), "no byte n-gram tables"),
            ("encoder_hash_byte_group_size", bool(a.get("encoder_hash_byte_group_size")), "hash n-gram sizes"),
            ("weight_tying", not a.get("weight_tying"), "untied weights"),
            ("use_rope", a.get("use_rope") is True, "RoPE"),
            ("non_linearity", a.get("non_linearity") == "swiglu", "SwiGLU"),
            ("norm_type", a.get("norm_type") == "rmsnorm", "RMSNorm"),
            ("share_encoder_decoder_emb", a.get("share_encoder_decoder_emb") is True, "share_encoder_decoder_emb true")]
    for key, ok, want in need:
        a.require(key, ok, want)
    d_enc, d_dec, d_glob = a.int("dim_local_encoder"), a.int("dim_local_decoder"), a.int("dim_global")
    # bytelatent's token dim: dim_token, else the local dim with use_local_encoder_transformer.
    dim_token = a.get("dim_token") or (d_enc if a.get("use_local_encoder_transformer") else None)
    a.require("use_local_encoder_transformer", dim_token == d_enc,
              "byte states of the local-encoder width (use_local_encoder_transformer true, dim_token null)")
    a.require("dim_local_decoder", d_dec == d_enc, "dim_local_decoder = dim_local_encoder")
    a.require("dim_global", d_glob != d_dec, "dim_global != dim_local_decoder (the decoder's latent projection)")
    # bytelatent pools once and lets every encoder layer's cross-attention update the same patch
    # states; fastblt (like transformers) re-pools at the last layer: equal only for one cross-attn layer.
    a.require("cross_attn_all_layers_encoder",
              not (a.get("cross_attn_all_layers_encoder") and a.int("n_layers_local_encoder") > 1),
              "encoder cross-attention after the last layer only (false, or a 1-layer encoder)")
    heads_e, heads_d = a.int("n_heads_local_encoder"), a.int("n_heads_local_decoder")
    a.require("cross_attn_nheads", a.get("cross_attn_nheads") in (None, heads_e) and heads_e == heads_d,
              "cross_attn_nheads = n_heads_local_encoder = n_heads_local_decoder")
    heads_g = a.int("n_heads_global")
    head_dim = a.get("head_dim")
    a.require("head_dim", head_dim is None or (head_dim == d_enc // heads_e == d_glob // heads_g), "head_dim = dim / heads")
    theta, eps, mult_of = a.float("rope_theta"), a.float("norm_eps"), a.int("multiple_of")
    mult = a.get("ffn_dim_multiplier")
    mult = None if mult is None else a.float("ffn_dim_multiplier")
    window = a.int("local_attention_window_len", True)
    kv = a.int("n_kv_heads", True)

    def stack(dim: int, layers: str, heads: int, n_kv: int | None, win: int | None) -> StackConfig:
        return StackConfig(dim=dim, n_layers=a.int(layers), n_heads=heads, n_kv_heads=n_kv,
                           ffn_dim=_ffn_dim(dim, mult_of, mult), rope_theta=theta, norm_eps=eps, window=win)

    sizes = a.get("encoder_hash_byte_group_size")
    if isinstance(sizes, str):  # bytelatent also accepts "3,4,5"
        sizes = [s for s in sizes.split(",") if s]
    try:
        sizes = tuple(int(s) for s in sizes)
    except (TypeError, ValueError):
        raise ValueError(f"{where}/{CONFIG_NAME} args field encoder_hash_byte_group_size must be a list of "
                         f"integers, got {a.get('encoder_hash_byte_group_size')!r}") from None
    params_where = f"{where}/{ENTROPY_DIR}/{PARAMS_NAME}"
    return BLTConfig(
        encoder=stack(d_enc, "n_layers_local_encoder", heads_e, kv, window),
        global_=stack(d_glob, "n_layers_global", heads_g, a.int("n_kv_heads_global", True), None),
        decoder=stack(d_dec, "n_layers_local_decoder", heads_d, kv, window),
        entropy=_entropy_stack(params, params_where),
        patching=patching_from_release(args, params, where),
        cross_attn_k=a.int("cross_attn_k"),
        encoder_cross_attn_all_layers=bool(a.get("cross_attn_all_layers_encoder")),
        decoder_cross_attn_all_layers=bool(a.get("cross_attn_all_layers_decoder")),
        hash_ngram_sizes=sizes,
        hash_vocab=a.int("encoder_hash_byte_group_vocab"),
        hash_functions=a.int("encoder_hash_byte_group_nb_functions"),
        double_residual=True,  # bytelatent's cross-attention returns x + attn and the caller adds x again
        max_seq_len=a.int("max_encoder_seq_length", True) or a.int("max_seqlen"),
    )


def _same(values: list[Any], what: str) -> Any:
    if len(set(values)) != 1:
        raise ValueError(f"the release layout has one {what} for encoder, global and decoder; this model has {values}")
    return values[0]


def ffn_rule(stacks: list[StackConfig], what: str) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that give every stack its FFN size under the bytelatent rule.
    Raises ValueError when none does."""
    mults: list[float | None] = [1.0, None]
    for s in stacks:
        r = s.ffn_dim / int(8 * s.dim / 3)
        mults += [round(r, 2), round(r, 4), r]
    for multiple_of in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        for m in mults:
            if all(_ffn_dim(s.dim, multiple_of, m) == s.ffn_dim for s in stacks):
                return multiple_of, m
    raise ValueError(f"the {what} FFN sizes {[s.ffn_dim for s in stacks]} (dims {[s.dim for s in stacks]}) follow no "
                     "single multiple_of / ffn_dim_multiplier of the release layout")


def config_to_release(cfg: BLTConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json, entropy_model/params.json) dicts for ``cfg``. Raises ValueError for what the
    release layout cannot express (no entropy model, double_residual=False, per-stack RoPE θ, ...)."""
    if cfg.entropy is None or cfg.patching.mode != "entropy" or cfg.patching.rule != "global":
        raise ValueError("the release layout needs entropy patching with the global threshold rule")
    if not cfg.double_residual:
        raise ValueError("the released BLT uses the double cross-attention residual; this model has double_residual=False")
    if cfg.encoder.window != cfg.decoder.window:
        raise ValueError("the release layout has one local attention window for encoder and decoder")
    if cfg.entropy.window is None:
        raise ValueError("the release entropy model always uses a sliding window; this model's has none")
    if cfg.encoder.n_kv_heads != cfg.decoder.n_kv_heads or cfg.encoder.n_heads != cfg.decoder.n_heads:
        raise ValueError("the release layout has one (kv) head count for the local encoder and decoder")
    if cfg.encoder_cross_attn_all_layers and cfg.encoder.n_layers > 1:
        raise ValueError("bytelatent's encoder cross-attention in all layers accumulates across layers; this "
                         "model's (transformers semantics) re-pools at the last layer: not expressible")
    if cfg.global_.dim == cfg.decoder.dim:
        raise ValueError("the release layout needs dim_global != dim_local_decoder")
    theta = _same([s.rope_theta for s in (cfg.encoder, cfg.global_, cfg.decoder)], "RoPE theta")
    eps = _same([s.norm_eps for s in (cfg.encoder, cfg.global_, cfg.decoder)], "norm eps")
    mult_of, mult = ffn_rule([cfg.encoder, cfg.global_, cfg.decoder], "encoder/global/decoder")
    e_mult_of, e_mult = ffn_rule([cfg.entropy], "entropy model")
    e = cfg.entropy
    args = {
        "vocab_size": VOCAB_SIZE, "pm_size": 0, "dim_token": None, "use_local_encoder_transformer": True,
        "dim_local_encoder": cfg.encoder.dim, "dim_global": cfg.global_.dim, "dim_local_decoder": cfg.decoder.dim,
        "n_layers_local_encoder": cfg.encoder.n_layers, "n_layers_global": cfg.global_.n_layers,
        "n_layers_local_decoder": cfg.decoder.n_layers, "n_heads_local_encoder": cfg.encoder.n_heads,
        "n_heads_global": cfg.global_.n_heads, "n_heads_local_decoder": cfg.decoder.n_heads,
        "n_kv_heads": cfg.encoder.n_kv_heads, "n_kv_heads_global": cfg.global_.n_kv_heads, "head_dim": None,
        "multiple_of": mult_of, "ffn_dim_multiplier": mult, "norm_eps": eps, "rope_theta": theta,
        "local_attention_window_len": cfg.encoder.window, "max_encoder_seq_length": cfg.max_seq_len,
        "max_seqlen": cfg.max_seq_len, "cross_attn_encoder": True, "cross_attn_decoder": True,
        "cross_attn_init_by_pooling": True, "downsampling_by_pooling": "max", "cross_attn_k": cfg.cross_attn_k,
        "cross_attn_nheads": cfg.encoder.n_heads, "cross_attn_all_layers_encoder": cfg.encoder_cross_attn_all_layers,
        "cross_attn_all_layers_decoder": cfg.decoder_cross_attn_all_layers, "cross_attn_window_encoder": None,
        "cross_attn_window_decoder": None, "share_encoder_decoder_emb": True,
        "encoder_hash_byte_group_size": list(cfg.hash_ngram_sizes), "encoder_hash_byte_group_vocab": cfg.hash_vocab,
        "encoder_hash_byte_group_nb_functions": cfg.hash_functions, "encoder_enable_byte_ngrams": False,
        "weight_tying": False, "use_rope": True, "non_linearity": "swiglu", "norm_type": "rmsnorm",
        "patch_in_forward": True, "patching_mode": "entropy", "patching_threshold": cfg.patching.threshold,
        "max_patch_length": cfg.patching.max_patch_length, "monotonicity": False, "patching_threshold_add": None,
    }
    params = {
        "entropy_model": {"vocab_size": VOCAB_SIZE, "dim": e.dim, "n_layers": e.n_layers, "n_heads": e.n_heads,
                          "n_kv_heads": e.n_kv_heads, "multiple_of": e_mult_of, "ffn_dim_multiplier": e_mult,
                          "norm_eps": e.norm_eps, "rope_theta": e.rope_theta, "sliding_window": e.window,
                          "max_seqlen": cfg.max_seq_len, "attn_bias_type": "local_block_causal"},
        "data": {"patcher_args": {"threshold": cfg.patching.threshold, "max_patch_length": cfg.patching.max_patch_length,
                                  "monotonicity": False, "threshold_add": None}},
    }
    return {"args": args}, params


# ---------------------------------------------------------------------------- tensors
def _rename(name: str, table: dict[str, str]) -> str:
    return ".".join(table.get(part, part) for part in name.split("."))


def _shape_fields(name: str) -> str:
    """The config fields that set the shape of a release tensor (for error messages)."""
    if name.startswith("patcher.") or name.startswith("entropy:"):
        return f"{ENTROPY_DIR}/{PARAMS_NAME} entropy_model.dim / n_heads / n_kv_heads / multiple_of / ffn_dim_multiplier"
    if name.startswith(_HASH):
        return f"{CONFIG_NAME} args.encoder_hash_byte_group_vocab / dim_local_encoder"
    for prefix, part in (("local_encoder", "local_encoder"), ("global_transformer", "global"), ("local_decoder", "local_decoder")):
        if name.startswith(prefix):
            kv = "n_kv_heads_global" if part == "global" else "n_kv_heads"
            return (f"{CONFIG_NAME} args.dim_{part} / n_heads_{part} / {kv} / cross_attn_k / dim_global / "
                    f"multiple_of / ffn_dim_multiplier")
    return f"{CONFIG_NAME} args"


def _count(names: list[str]) -> str:
    return f"{names[:5]}{'…' if len(names) > 5 else ''}"


def state_from_release(main: dict[str, torch.Tensor], entropy: dict[str, torch.Tensor], model: BLT,
                       where: Path) -> dict[str, torch.Tensor]:
    """Our state dict from release tensors (``main``: model.safetensors, ``entropy``: consolidated.pth).

    Raises ValueError naming the file, the tensor and the config fields on a missing, unexpected or
    mis-shaped tensor.
    """
    own = model.state_dict()
    cfg = model.cfg
    state: dict[str, torch.Tensor] = {}
    mfile, efile = where / WEIGHTS_NAME, where / ENTROPY_DIR / ENTROPY_WEIGHTS
    n_tables = cfg.hash_functions * len(cfg.hash_ngram_sizes)
    tables: dict[int, torch.Tensor] = {}
    origin: dict[str, tuple[Path, str]] = {}
    unexpected = []
    for name, t in main.items():
        if name.endswith("freqs_cis"):  # RoPE buffers, not weights
            continue
        parts = name.split(".")
        if parts[0] == _HASH and len(parts) == 3 and parts[1].isdigit() and parts[2] == "weight":
            tables[int(parts[1])] = t
            continue
        ours = "lm_head.weight" if name == "local_decoder.output.weight" else _rename(name, SEGMENTS)
        if ours not in own or ours.startswith("patcher."):
            unexpected.append(name)
            continue
        state[ours], origin[ours] = t, (mfile, name)
    for name, t in entropy.items():
        if name.endswith("freqs_cis"):
            continue
        ours = "patcher." + _rename(name, SEGMENTS)
        if ours not in own:
            unexpected.append(f"{ENTROPY_DIR}/{ENTROPY_WEIGHTS}:{name}")
            continue
        state[ours], origin[ours] = t, (efile, name)
    want = set(range(n_tables))
    if set(tables) != want:
        raise ValueError(f"{mfile}: config.json args (encoder_hash_byte_group_nb_functions × "
                         f"encoder_hash_byte_group_size = {n_tables}) needs hash tables {_HASH}.0 … {n_tables - 1}; "
                         f"the file has {sorted(tables)}")
    for i in range(n_tables):
        if tables[i].shape != (cfg.hash_vocab, cfg.encoder.dim):
            raise ValueError(f"{mfile}: tensor {_HASH}.{i}.weight has shape {tuple(tables[i].shape)}, "
                             f"{_shape_fields(_HASH)} need {(cfg.hash_vocab, cfg.encoder.dim)}")
    if n_tables:
        state[f"{_HASH}.weight"] = torch.cat([tables[i] for i in range(n_tables)], dim=0)
    for k, v in state.items():
        file, name = origin.get(k, (mfile, k))
        if v.shape != own[k].shape:
            raise ValueError(f"{file}: tensor {name} has shape {tuple(v.shape)}, but {_shape_fields(name if file == mfile else 'entropy:')} "
                             f"need {tuple(own[k].shape)}")
        if not v.is_floating_point():
            raise ValueError(f"{file}: tensor {name} has dtype {v.dtype}, expected a float tensor")
    missing = sorted(set(own) - set(state))
    if unexpected or missing:
        back = [f"{ENTROPY_DIR}/{ENTROPY_WEIGHTS}:" + _rename(k[len("patcher."):], _BACK) if k.startswith("patcher.")
                else ("local_decoder.output.weight" if k == "lm_head.weight" else _rename(k, _BACK)) for k in missing]
        raise ValueError(f"{where} does not match its config (layer counts n_layers_*, cross_attn_all_layers_*, "
                         f"dim_global vs cross_attn_k × dim_local_encoder, entropy_model.n_layers): missing {_count(back)}, unexpected {_count(unexpected)}")
    return state


def state_to_release(model: BLT) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(model.safetensors, consolidated.pth ``model``) tensors of ``model`` under bytelatent names.
    BLT-D's extra input rows (MASK, BLOCK_PAD) are dropped, as in :func:`fastblt.save_hf`."""
    cfg = model.cfg
    main: dict[str, torch.Tensor] = {}
    entropy: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if k.startswith("patcher."):
            entropy[_rename(k[len("patcher."):], _BACK)] = v
        elif k == f"{_HASH}.weight":
            for i, table in enumerate(v.split(cfg.hash_vocab, dim=0)):
                main[f"{_HASH}.{i}.weight"] = table.contiguous()
        elif k == "lm_head.weight":
            main["local_decoder.output.weight"] = v
        elif k == "local_encoder.embed_tokens.weight":
            main["local_encoder.tok_embeddings.weight"] = v[:VOCAB_SIZE].contiguous()
        else:
            main[_rename(k, _BACK)] = v
    return main, entropy


# ---------------------------------------------------------------------------- files
def read_params(where: Path) -> dict[str, Any]:
    """entropy_model/params.json of a release folder. Raises FileNotFoundError / ValueError naming it."""
    edir = where / ENTROPY_DIR
    if not edir.is_dir():
        raise FileNotFoundError(f"{edir} is missing: a release-layout BLT folder ({CONFIG_NAME} with 'args') needs "
                                f"{ENTROPY_DIR}/{PARAMS_NAME} and {ENTROPY_DIR}/{ENTROPY_WEIGHTS}")
    from .checkpoint import read_json_object
    return read_json_object(edir / PARAMS_NAME)


def read_entropy_weights(where: Path) -> dict[str, torch.Tensor]:
    """The entropy model's tensors from consolidated.pth, loaded with ``torch.load(weights_only=True)``
    (plain containers of tensors only; anything else is refused). A top-level ``model`` or
    ``state_dict`` entry is unwrapped. Raises FileNotFoundError / ValueError naming the file."""
    p = where / ENTROPY_DIR / ENTROPY_WEIGHTS
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{p} could not be read as plain tensors (torch.load weights_only=True refused it or "
                         f"it is corrupt): {first}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{p} holds a {type(obj).__name__}, not a dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{p}: entries {_count([str(b) for b in bad])} are not tensors")
    return obj


def load_release(path: str | os.PathLike, raw: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> BLT:
    """Load a release-layout folder as a :class:`BLT` in eval mode (``dtype``, ``device``).

    raw: the already-parsed config.json (read again when None). Raises FileNotFoundError for a
    missing file or ``entropy_model/`` folder, ValueError naming the file and field otherwise.
    """
    from .checkpoint import _read_config, _read_weights  # the shared readers (clear errors)

    where = Path(path)
    raw = _read_config(where) if raw is None else raw
    params = read_params(where)
    cfg = config_from_release(raw["args"], params, where)
    with torch.device("meta"):  # no random init of (possibly billions of) parameters
        model = BLT(cfg)
    state = state_from_release(_read_weights(where), read_entropy_weights(where), model, where)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
    if model.patcher is not None:
        model.patcher.requires_grad_(False)
    return model.eval()


def save_release(model: BLT, path: str | os.PathLike) -> None:
    """Write ``model`` in the release layout (config.json, model.safetensors, entropy_model/params.json,
    entropy_model/consolidated.pth as ``{"model": tensors}``), atomically per file, in the model's dtype.
    Raises ValueError for what the layout cannot express (see :func:`config_to_release`)."""
    from .checkpoint import atomic_save_tensors, atomic_write_bytes

    config, params = config_to_release(model.cfg)
    main, entropy = state_to_release(model)
    path = Path(path)
    (path / ENTROPY_DIR).mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(main, path / WEIGHTS_NAME, metadata={"format": "pt"})
    tmp = path / ENTROPY_DIR / f".{ENTROPY_WEIGHTS}.tmp{os.getpid()}"
    torch.save({"model": entropy}, tmp)
    os.replace(tmp, path / ENTROPY_DIR / ENTROPY_WEIGHTS)
    atomic_write_bytes(path / ENTROPY_DIR / PARAMS_NAME, json.dumps(params, indent=2).encode())
    atomic_write_bytes(path / CONFIG_NAME, json.dumps(config, indent=2).encode())
