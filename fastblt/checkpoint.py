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

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import VOCAB_SIZE, BLTConfig, ConfigError, PatchingConfig, StackConfig
from .model.blt import BLT

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default_model"  # the shipped BLT-D model
FORMAT_VERSION = 1


class DiskFullError(RuntimeError):
    """A write failed because the device holding ``folder`` is full (the previous file is kept)."""

    def __init__(self, folder: Path):
        self.folder = folder
        super().__init__(f"no space left on the device holding {folder}: free some space and retry "
                         "(the previous checkpoint, if any, is kept)")


def _file_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` gives new files (safetensors writes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def disk_full(folder: Path, exc: BaseException) -> bool:
    """Whether ``exc`` (raised while writing into ``folder``) means the device is full.

    ENOSPC/EDQUOT, a message that says so (safetensors' "os error 28"), or — for torch.save's
    opaque "enforce fail" errors — less than 1 MiB left on the device.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if "No space left on device" in text or "os error 28" in text:
        return True
    if not isinstance(exc, (OSError, RuntimeError, SafetensorError)):
        return False
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


@contextmanager
def writing(folder: Path, *cleanup: Path) -> Iterator[None]:
    """Around a write into ``folder``: on failure remove ``cleanup`` paths; a full disk raises DiskFullError."""
    try:
        yield
    except BaseException as e:
        for c in cleanup:
            if c.is_dir():
                shutil.rmtree(c, ignore_errors=True)
            else:
                c.unlink(missing_ok=True)
        if not isinstance(e, KeyboardInterrupt) and disk_full(folder, e):
            raise DiskFullError(folder) from e
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename.

    Raises DiskFullError (the old file kept, the temporary removed) when the device is full.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with writing(path.parent, tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save ``tensors`` as safetensors at ``path`` atomically, with the process umask's file mode.

    Raises DiskFullError (the old file kept, the temporary removed) when the device is full.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with writing(path.parent, tmp):
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}: the path does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a model folder (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME})")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} is missing: {path} is not a model folder")
    return read_json_object(cfg_path)


def read_json_object(file: Path) -> dict[str, Any]:
    """A JSON file holding an object. Raises FileNotFoundError / ValueError naming the file."""
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing")
    if not file.is_file():
        raise ValueError(f"{file} is not a file")
    try:
        raw = json.loads(file.read_bytes())
    except OSError as e:
        raise ValueError(f"{file} cannot be read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file} must hold a JSON object, not {type(raw).__name__}")
    return raw


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    w = path / WEIGHTS_NAME
    if not w.exists():
        raise FileNotFoundError(f"{w} is missing")
    if not w.is_file():
        raise ValueError(f"{w} is not a file")
    if not os.access(w, os.R_OK):
        raise ValueError(f"{w} cannot be read: permission denied")
    try:
        return load_file(str(w))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{w} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def check_finite(state: dict[str, torch.Tensor], source: Path) -> None:
    """Raise ValueError naming the file and the first tensor that holds NaN or ±inf.

    One pass over the floating tensors (max |w|): ~50 ms for the 8.6M-parameter shipped model on one
    CPU core.
    """
    for k, v in state.items():
        # max |w| is NaN or inf iff some element is (max propagates NaN); cheaper than isfinite(v).all()
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v.abs().amax())):
            bad = int((~torch.isfinite(v)).sum())
            raise ValueError(f"{source}: tensor {k} holds {bad} non-finite value(s) (NaN/inf): the file is corrupt "
                             "or training diverged (load(..., check_weights=False) skips this check)")


# ---------------------------------------------------------------------------- HF config mapping
_HF_STACK = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
             "n_kv_heads": "num_key_value_heads", "ffn_dim": "intermediate_size", "norm_eps": "rms_norm_eps",
             "rope_theta": "rope_theta"}
_HF_TOP = {"cross_attn_k": "cross_attn_k", "hash_ngram_sizes": "encoder_hash_byte_group_size",
           "hash_vocab": "encoder_hash_byte_group_vocab", "hash_functions": "encoder_hash_byte_group_nb_functions",
           "max_seq_len": "encoder_config.max_position_embeddings"}
_HF_SUB = {"encoder": "encoder_config", "decoder": "decoder_config", "global_": "global_config",
           "entropy": "patcher_config", "patching": ""}


def _hf_field(field: str) -> str:
    """The transformers config key of one of our dotted field paths (for error messages)."""
    head, _, rest = field.partition(".")
    if head in _HF_SUB and rest:
        if rest == "window":
            return "patcher_config.sliding_window" if head == "entropy" else "local_attention_window_len"
        if head == "patching":
            return {"threshold": "patching_threshold"}.get(rest, rest)
        return f"{_HF_SUB[head]}.{_HF_STACK.get(rest, rest)}"
    return _HF_TOP.get(field, field)


def _theta(sub: dict[str, Any], default: float) -> Any:
    rp = sub.get("rope_parameters") or {}
    return rp.get("rope_theta", sub.get("rope_theta", default)) if isinstance(rp, dict) else rp


def _stack_from_hf(sub: Any, window: int | None, theta: float, name: str) -> StackConfig:
    if not isinstance(sub, dict):
        raise ConfigError(name, sub, "must be an object")
    try:
        return StackConfig(dim=sub["hidden_size"], n_layers=sub["num_hidden_layers"],
                           n_heads=sub["num_attention_heads"], n_kv_heads=sub.get("num_key_value_heads"),
                           ffn_dim=sub.get("intermediate_size"), rope_theta=_theta(sub, theta),
                           norm_eps=sub.get("rms_norm_eps", 1e-5), window=window)
    except ConfigError as e:
        raise e.under(name) from None


def config_from_hf(hf: dict[str, Any]) -> BLTConfig:
    """BLTConfig from a transformers ``BltConfig`` dict (config.json).

    Raises ConfigError for a bad value (its field is our dotted path, e.g. ``encoder.norm_eps``) and
    ValueError for what is unsupported or missing.
    """
    try:
        window = hf.get("local_attention_window_len", 512)
        enc, dec, glob = hf["encoder_config"], hf["decoder_config"], hf["global_config"]
        pat = hf.get("patcher_config")
        in_forward = hf.get("patch_in_forward", True) and pat is not None
        mode = hf.get("patching_mode", "entropy")
        if mode == "entropy" and not in_forward:
            raise ValueError("entropy patching without a patcher (patch_in_forward=false) is not supported")
        if mode == "entropy":
            patching = _build_patching(mode="entropy", threshold=hf.get("patching_threshold", 1.335442066192627),
                                       max_patch_length=hf.get("max_patch_length"))
        else:  # transformers then makes every byte its own patch
            patching = _build_patching(mode="static", patch_size=1, max_patch_length=hf.get("max_patch_length"))
        entropy = (_stack_from_hf(pat, pat.get("sliding_window") if isinstance(pat, dict) else None, 10000.0, "entropy")
                   if in_forward else None)
        return BLTConfig(
            encoder=_stack_from_hf(enc, window, 500000.0, "encoder"),
            global_=_stack_from_hf(glob, None, 500000.0, "global_"),
            decoder=_stack_from_hf(dec, window, 500000.0, "decoder"),
            entropy=entropy,
            patching=patching,
            cross_attn_k=hf.get("cross_attn_k", 2),
            encoder_cross_attn_all_layers=enc.get("cross_attn_all_layers", False),
            decoder_cross_attn_all_layers=dec.get("cross_attn_all_layers", True),
            hash_ngram_sizes=hf.get("encoder_hash_byte_group_size") or (3, 4, 5, 6, 7, 8),
            hash_vocab=hf.get("encoder_hash_byte_group_vocab", 500002),
            hash_functions=hf.get("encoder_hash_byte_group_nb_functions", 1),
            double_residual=True,
            max_seq_len=enc.get("max_position_embeddings", 24576),
        )
    except KeyError as e:
        raise ValueError(f"HF BLT config lacks field {e}") from None


def _build_patching(**kw: Any) -> PatchingConfig:
    try:
        return PatchingConfig(**kw)
    except ConfigError as e:
        raise e.under("patching") from None


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
         device: str | torch.device = "cpu", check_weights: bool = True) -> BLT:
    """Load a model from our checkpoint folder, an HF-format BLT folder, the released BLT layout
    (:mod:`fastblt.release`), or a named model ("default" = None, "blt"; :mod:`fastblt.named_models`).

    Returns a :class:`BLT` in eval mode with parameters of ``dtype`` on ``device``.
    Every config field is validated (type, finiteness, range) and, unless ``check_weights=False``
    (for very large models: it costs one pass over the weights), every weight must be finite.
    Raises FileNotFoundError for a missing path or file; ValueError naming the file (and the field
    and value, or the tensor) for an unreadable or malformed config, a bad config value, another
    model type, truncated / mismatching safetensors, or NaN/inf weights.
    """
    from . import named_models, release

    path = named_models.resolve(path)
    raw = _read_config(path)
    cfg_path = path / CONFIG_NAME
    if release.is_release_config(raw):
        model = release.load_release(path, raw, dtype=dtype, device=device)
        if check_weights:
            check_finite(model.state_dict(), path)
        return model
    kind = raw.get("model_type")
    try:
        if kind == "fastblt":
            version = raw.get("format_version", FORMAT_VERSION)
            if isinstance(version, bool) or not isinstance(version, int):
                raise ConfigError("format_version", version, "must be an integer")
            if version > FORMAT_VERSION:
                raise ValueError(f"{cfg_path} has format_version {version}; this fastblt "
                                 f"reads up to {FORMAT_VERSION}: upgrade fastblt")
            if "blt" not in raw:
                raise ConfigError("blt", None, "is missing")
            try:
                cfg = BLTConfig.from_dict(raw["blt"])
            except ConfigError as e:
                raise e.under("blt") from None
        elif kind == "blt":
            try:
                cfg = config_from_hf(raw)
            except ConfigError as e:
                hf_name = _hf_field(e.field)
                raise ConfigError(e.field if hf_name == e.field else f"{hf_name} (our {e.field})",
                                  e.value, e.reason) from None
        else:
            raise ValueError(f"{cfg_path} describes model_type {kind!r}, not a BLT ('blt' or 'fastblt')")
    except ConfigError as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{cfg_path} is not a valid {kind} config: {type(e).__name__}: {e}") from None
    state = _read_weights(path)
    if kind == "blt":
        state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
    if check_weights:
        check_finite(state, path / WEIGHTS_NAME)
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
