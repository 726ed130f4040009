"""Loading and saving models: our checkpoint directories and the transformers ``Blt`` layout.

Both formats are a folder with ``config.json`` and ``model.safetensors``:
- ours: ``{"model_type": "fastblt", "blt": <BLTConfig dict>, ...}``; tensor names are our module
  names (which follow the transformers layout without the ``model.`` prefix);
- HF: the ``config.json`` that ``transformers.BltConfig`` writes (``"model_type": "blt"``) and the
  tensors of ``BltForCausalLM`` (``model.*`` plus ``lm_head.weight``), as the released weights
  (``facebook/blt-1b`` converted) are stored. ``BltForCausalLM.from_pretrained`` reads what
  :func:`save_hf` writes.

Files are written atomically (temporary name, then ``os.replace``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import VOCAB_SIZE, BLTConfig, PatchingConfig, StackConfig
from .model.blt import BLT

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default_model"  # the shipped BLT-D model
FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}: the path does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a model folder (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME})")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} is missing: {path} is not a model folder")
    try:
        return json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    w = path / WEIGHTS_NAME
    if not w.exists():
        raise FileNotFoundError(f"{w} is missing")
    try:
        return load_file(str(w))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{w} is not a readable safetensors file (truncated or corrupt?): {e}") from None


# ---------------------------------------------------------------------------- HF config mapping
def _theta(sub: dict[str, Any], default: float) -> float:
    rp = sub.get("rope_parameters") or {}
    return float(rp.get("rope_theta", sub.get("rope_theta", default)))


def _stack_from_hf(sub: dict[str, Any], window: int | None, theta: float) -> StackConfig:
    return StackConfig(dim=sub["hidden_size"], n_layers=sub["num_hidden_layers"], n_heads=sub["num_attention_heads"],
                       n_kv_heads=sub.get("num_key_value_heads"), ffn_dim=sub.get("intermediate_size"),
                       rope_theta=_theta(sub, theta), norm_eps=sub.get("rms_norm_eps", 1e-5), window=window)


def config_from_hf(hf: dict[str, Any]) -> BLTConfig:
    """BLTConfig from a transformers ``BltConfig`` dict (config.json). Raises ValueError if unsupported."""
    try:
        window = hf.get("local_attention_window_len", 512)
        enc, dec, glob = hf["encoder_config"], hf["decoder_config"], hf["global_config"]
        pat = hf.get("patcher_config")
        in_forward = hf.get("patch_in_forward", True) and pat is not None
        mode = hf.get("patching_mode", "entropy")
        if mode == "entropy" and not in_forward:
            raise ValueError("entropy patching without a patcher (patch_in_forward=false) is not supported")
        if mode == "entropy":
            patching = PatchingConfig(mode="entropy", threshold=float(hf.get("patching_threshold", 1.335442066192627)),
                                      max_patch_length=hf.get("max_patch_length"))
        else:  # transformers then makes every byte its own patch
            patching = PatchingConfig(mode="static", patch_size=1, max_patch_length=hf.get("max_patch_length"))
        entropy = (_stack_from_hf(pat, pat.get("sliding_window"), 10000.0) if in_forward else None)
        return BLTConfig(
            encoder=_stack_from_hf(enc, window, 500000.0),
            global_=_stack_from_hf(glob, None, 500000.0),
            decoder=_stack_from_hf(dec, window, 500000.0),
            entropy=entropy,
            patching=patching,
            cross_attn_k=hf.get("cross_attn_k", 2),
            encoder_cross_attn_all_layers=enc.get("cross_attn_all_layers", False),
            decoder_cross_attn_all_layers=dec.get("cross_attn_all_layers", True),
            hash_ngram_sizes=tuple(hf.get("encoder_hash_byte_group_size") or (3, 4, 5, 6, 7, 8)),
            hash_vocab=hf.get("encoder_hash_byte_group_vocab", 500002),
            hash_functions=hf.get("encoder_hash_byte_group_nb_functions", 1),
            double_residual=True,
            max_seq_len=enc.get("max_position_embeddings", 24576),
        )
    except KeyError as e:
        raise ValueError(f"HF BLT config lacks field {e}") from None


def _stack_to_hf(s: StackConfig) -> dict[str, Any]:
    return {"hidden_size": s.dim, "num_hidden_layers": s.n_layers, "num_attention_heads": s.n_heads,
            "num_key_value_heads": s.n_kv_heads, "intermediate_size": s.ffn_dim, "rms_norm_eps": s.norm_eps,
            "rope_parameters": {"rope_theta": s.rope_theta, "rope_type": "default"}}


def config_to_hf(cfg: BLTConfig) -> dict[str, Any]:
    """transformers ``BltConfig`` dict for ``cfg``. Raises ValueError for what the HF port cannot express."""
    if not cfg.double_residual:
        raise ValueError("the transformers BLT always uses the double cross-attention residual; "
                         "this model was built with double_residual=False")
    if cfg.encoder.window != cfg.decoder.window:
        raise ValueError("the transformers BLT uses one local attention window for encoder and decoder")
    if cfg.patching.mode == "space" or (cfg.patching.mode == "static" and cfg.patching.patch_size != 1):
        raise ValueError(f"the transformers BLT cannot express {cfg.patching.mode} patching")
    if cfg.patching.mode == "entropy" and cfg.patching.rule != "global":
        raise ValueError("the transformers BLT only has the global entropy threshold rule")
    enc = dict(_stack_to_hf(cfg.encoder), cross_attn_all_layers=cfg.encoder_cross_attn_all_layers,
               cross_attn_k=cfg.cross_attn_k, hidden_size_global=cfg.global_.dim,
               max_position_embeddings=cfg.max_seq_len, vocab_size=VOCAB_SIZE)
    dec = dict(_stack_to_hf(cfg.decoder), cross_attn_all_layers=cfg.decoder_cross_attn_all_layers,
               cross_attn_k=cfg.cross_attn_k, hidden_size_global=cfg.global_.dim,
               max_position_embeddings=cfg.max_seq_len, vocab_size=VOCAB_SIZE)
    d: dict[str, Any] = {
        "architectures": ["BltForCausalLM"], "model_type": "blt", "vocab_size": VOCAB_SIZE,
        "cross_attn_k": cfg.cross_attn_k, "local_attention_window_len": cfg.encoder.window,
        "encoder_hash_byte_group_size": list(cfg.hash_ngram_sizes),
        "encoder_hash_byte_group_vocab": cfg.hash_vocab,
        "encoder_hash_byte_group_nb_functions": cfg.hash_functions,
        "patch_in_forward": cfg.entropy is not None, "max_patch_length": cfg.patching.max_patch_length,
        "patching_mode": "entropy" if cfg.patching.mode == "entropy" else "none",
        "patching_threshold": cfg.patching.threshold,
        "encoder_config": enc, "decoder_config": dec, "global_config": _stack_to_hf(cfg.global_),
        "dtype": "float32",
        "use_cache": False,  # transformers' BLT cache fails in its default generate()
    }
    if cfg.entropy is not None:
        d["patcher_config"] = dict(_stack_to_hf(cfg.entropy), sliding_window=cfg.entropy.window, vocab_size=VOCAB_SIZE)
    return d


# ---------------------------------------------------------------------------- load / save
def _fill(model: BLT, state: dict[str, torch.Tensor], source: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source / WEIGHTS_NAME} does not match its config: "
                         f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{source / WEIGHTS_NAME}: tensor {k} has shape {tuple(v.shape)}, "
                             f"the config needs {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32,
         device: str | torch.device = "cpu") -> BLT:
    """Load a model from our checkpoint folder, an HF-format BLT folder, the released BLT layout
    (:mod:`fastblt.release`), or a named model ("default" = None, "blt"; :mod:`fastblt.named_models`).

    Returns a :class:`BLT` in eval mode with parameters of ``dtype`` on ``device``.
    Raises FileNotFoundError for a missing path or file, ValueError (naming the file) for a folder
    without a config, a config of another model type, or truncated / mismatching safetensors.
    """
    from . import named_models, release

    path = named_models.resolve(path)
    raw = _read_config(path)
    if release.is_release_config(raw):
        return release.load_release(path, raw, dtype=dtype, device=device)
    kind = raw.get("model_type") if isinstance(raw, dict) else None
    try:
        if kind == "fastblt":
            if raw.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
                raise ValueError(f"{path / CONFIG_NAME} has format_version {raw['format_version']}; this fastblt "
                                 f"reads up to {FORMAT_VERSION}: upgrade fastblt")
            cfg = BLTConfig.from_dict(raw["blt"])
        elif kind == "blt":
            cfg = config_from_hf(raw)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path / CONFIG_NAME} is not a valid {kind} config: {type(e).__name__}: {e}") from None
    if kind == "fastblt":
        state = _read_weights(path)
    elif kind == "blt":
        state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in _read_weights(path).items()}
    else:
        raise ValueError(f"{path / CONFIG_NAME} describes model_type {kind!r}, not a BLT ('blt' or 'fastblt')")
    model = BLT(cfg)
    _fill(model, state, path)
    return model.to(device=device, dtype=dtype).eval()


def save(model: BLT, path: str | os.PathLike, dtype: torch.dtype | None = None, extra: dict[str, Any] | None = None) -> None:
    """Save in our format: config.json (with ``extra`` metadata such as training figures) + model.safetensors.

    dtype: optionally cast floating tensors (e.g. torch.bfloat16 to halve the size).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    atomic_save_tensors(state, path / WEIGHTS_NAME, metadata={"format": "fastblt"})
    cfg = {"model_type": "fastblt", "format_version": FORMAT_VERSION, "blt": model.cfg.to_dict(), **(extra or {})}
    atomic_write_bytes(path / CONFIG_NAME, json.dumps(cfg, indent=2).encode())


def save_hf(model: BLT, path: str | os.PathLike) -> None:
    """Save in the transformers layout so that ``BltForCausalLM.from_pretrained(path)`` reads it.

    BLT-D's extra input rows (MASK, BLOCK_PAD) are dropped. Raises ValueError when the config uses
    something the transformers port cannot express (e.g. double_residual=False).
    """
    hf_cfg = config_to_hf(model.cfg)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        if k == "local_encoder.embed_tokens.weight":
            v = v[:VOCAB_SIZE]
        state[k if k == "lm_head.weight" else f"model.{k}"] = v.float()
    atomic_save_tensors(state, path / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_bytes(path / CONFIG_NAME, json.dumps(hf_cfg, indent=2).encode())
