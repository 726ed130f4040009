"""Typed configuration of a BLT model, with named presets.

A :class:`BLTConfig` describes every component of the Byte Latent Transformer (Pagnoni et al.,
arXiv 2412.09871): the entropy model and patching rule, the local encoder with hash n-gram
embeddings, the global latent transformer, and the local decoder. BLT-D models (Fast BLT §3.2)
add ``diffusion_block_size``; they share the architecture.

Ids (BLT convention): byte value b has id b + 4; BOE = 0, BOS = 1, EOS = 2, BPE = 3.
BLT-D adds two input-only ids past the byte vocabulary: MASK = 260 and BLOCK_PAD = 261.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

OFFSET = 4
BOE_ID, BOS_ID, EOS_ID, BPE_ID = 0, 1, 2, 3
VOCAB_SIZE = 260  # 256 bytes + 4 specials: the size of every byte distribution
MASK_ID = 260  # BLT-D: an absorbing [MASK] slot (input only)
BLOCK_PAD_ID = 261  # BLT-D: a block slot past the end of the sequence (input only)


def byte_ids(data: bytes) -> list[int]:
    """BLT ids of a sequence: BOS followed by byte b → b + 4 for every byte of ``data``."""
    return [BOS_ID] + [b + OFFSET for b in data]


def ffn_dim_for(dim: int, multiple_of: int = 256) -> int:
    """Llama's SwiGLU hidden size rule used by BLT: 256 · ceil(int(8·dim/3) / 256)."""
    return multiple_of * math.ceil(int(8 * dim / 3) / multiple_of)


# ---------------------------------------------------------------------------- validation
class ConfigError(ValueError):
    """A bad config value: ``field`` (dotted path, e.g. ``encoder.n_kv_heads``), ``value`` and ``reason``.

    ``str(e)`` is ``"<field> = <value>: <reason>"``; loaders prefix the file name.
    """

    def __init__(self, field: str, value: Any, reason: str):
        self.field, self.value, self.reason = field, value, reason
        super().__init__(f"{field} = {value!r}: {reason}")

    def under(self, prefix: str) -> "ConfigError":
        """The same error with ``prefix.`` in front of its field path (unchanged for an empty prefix)."""
        return ConfigError(_join(prefix, self.field), self.value, self.reason) if prefix else self


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def as_int(value: Any, name: str, lo: int | None = None, optional: bool = False) -> int | None:
    """``value`` as a Python int (numpy integers accepted; bools, floats and strings refused), >= ``lo``.

    Raises ConfigError naming ``name`` and the value.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(name, value, f"must be an integer{' or null' if optional else ''}")
    if lo is not None and value < lo:
        raise ConfigError(name, value, f"must be >= {lo}")
    return int(value)


def as_real(value: Any, name: str, gt: float | None = None, optional: bool = False) -> float | None:
    """``value`` as a finite Python float (ints and numpy scalars accepted; bools, strings refused), > ``gt``.

    Raises ConfigError naming ``name`` and the value.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(name, value, "must be a number")
    if not math.isfinite(value):
        raise ConfigError(name, value, "must be finite")
    if gt is not None and not value > gt:
        raise ConfigError(name, value, f"must be > {gt}")
    return float(value)


def _as_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "must be true or false")
    return value


def _as_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(name, value, f"must be one of {', '.join(choices)}")
    return value


def _build(cls: type, d: Any, name: str) -> Any:
    """``cls(**d)`` for a JSON object ``d``, with unknown / missing fields and bad values named under ``name``."""
    if not isinstance(d, dict):
        raise ConfigError(name or cls.__name__, d, "must be an object")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known, key=str)
    if unknown:
        raise ConfigError(_join(name, str(unknown[0])), d[unknown[0]], f"unknown field of {cls.__name__}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in d]
    if missing:
        raise ConfigError(_join(name, missing[0]), None, "is missing")
    try:
        return cls(**d)
    except ConfigError as e:
        raise e.under(name) from None


@dataclass
class StackConfig:
    """Shape of one transformer stack (pre-norm Llama blocks: RMSNorm, RoPE, SwiGLU, no biases).

    ``window``: sliding-window causal attention length in positions (None = full causal).
    Every field is validated (type, finiteness, range); a bad one raises :class:`ConfigError`.
    """

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    ffn_dim: int | None = None
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    window: int | None = None

    def __post_init__(self) -> None:
        self.dim = as_int(self.dim, "dim", 1)
        self.n_layers = as_int(self.n_layers, "n_layers", 1)
        self.n_heads = as_int(self.n_heads, "n_heads", 1)
        self.n_kv_heads = as_int(self.n_kv_heads, "n_kv_heads", 1, optional=True)
        self.ffn_dim = as_int(self.ffn_dim, "ffn_dim", 1, optional=True)
        self.rope_theta = as_real(self.rope_theta, "rope_theta", gt=0.0)
        self.norm_eps = as_real(self.norm_eps, "norm_eps", gt=0.0)
        self.window = as_int(self.window, "window", 1, optional=True)
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.ffn_dim is None:
            self.ffn_dim = ffn_dim_for(self.dim)
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ConfigError("n_heads", self.n_heads, f"must divide dim {self.dim} into heads of even size (RoPE pairs)")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError("n_kv_heads", self.n_kv_heads, f"must divide n_heads {self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass
class PatchingConfig:
    """How bytes are grouped into patches (BLT §2, Fast BLT §4.1).

    mode: "entropy" (entropy model), "static" (fixed ``patch_size``), "space" (after space-like bytes).
    rule: for entropy mode, "global" (H_t > threshold) or "monotonic" (H_t − H_{t−1} > monotonic_threshold).
    max_patch_length: split patches longer than this (bytes); None = no limit.
    Every field is validated; a bad one raises :class:`ConfigError`.
    """

    mode: str = "entropy"
    threshold: float = 1.335442066192627
    rule: str = "global"
    monotonic_threshold: float = 0.0
    max_patch_length: int | None = None
    patch_size: int = 4

    def __post_init__(self) -> None:
        self.mode = _as_choice(self.mode, "mode", ("entropy", "static", "space"))
        self.threshold = as_real(self.threshold, "threshold")
        self.rule = _as_choice(self.rule, "rule", ("global", "monotonic"))
        self.monotonic_threshold = as_real(self.monotonic_threshold, "monotonic_threshold")
        self.max_patch_length = as_int(self.max_patch_length, "max_patch_length", 1, optional=True)
        self.patch_size = as_int(self.patch_size, "patch_size", 1)


@dataclass
class BLTConfig:
    """A whole BLT (or BLT-D) model.

    ``double_residual`` reproduces the released weights' cross-attention residual (h = 2h + attn);
    ``False`` gives the clean single residual (h = h + attn) for from-scratch models.
    ``diffusion_block_size``: B of a BLT-D model (None for a plain BLT); it adds the MASK and
    BLOCK_PAD input rows to the encoder byte table.
    Every field is validated (type, finiteness, range); a bad one raises :class:`ConfigError`
    naming its dotted path (e.g. ``encoder.norm_eps``).
    """

    encoder: StackConfig
    global_: StackConfig
    decoder: StackConfig
    entropy: StackConfig | None
    patching: PatchingConfig = field(default_factory=PatchingConfig)
    cross_attn_k: int = 2
    encoder_cross_attn_all_layers: bool = False
    decoder_cross_attn_all_layers: bool = True
    hash_ngram_sizes: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    hash_vocab: int = 500002
    hash_functions: int = 1
    double_residual: bool = True
    max_seq_len: int = 24576
    diffusion_block_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("encoder", "global_", "decoder", "entropy"):
            v = getattr(self, name)
            if not (isinstance(v, StackConfig) or (v is None and name == "entropy")):
                raise ConfigError(name, v, "must be a StackConfig" + (" or null" if name == "entropy" else ""))
        if not isinstance(self.patching, PatchingConfig):
            raise ConfigError("patching", self.patching, "must be a PatchingConfig")
        self.cross_attn_k = as_int(self.cross_attn_k, "cross_attn_k", 1)
        for name in ("encoder_cross_attn_all_layers", "decoder_cross_attn_all_layers", "double_residual"):
            setattr(self, name, _as_bool(getattr(self, name), name))
        sizes = self.hash_ngram_sizes
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (list, tuple)) or not sizes:
            raise ConfigError("hash_ngram_sizes", sizes, "must be a non-empty list of integers >= 1")
        self.hash_ngram_sizes = tuple(as_int(n, f"hash_ngram_sizes[{i}]", 1) for i, n in enumerate(sizes))
        self.hash_vocab = as_int(self.hash_vocab, "hash_vocab", 1)
        self.hash_functions = as_int(self.hash_functions, "hash_functions", 1)
        self.max_seq_len = as_int(self.max_seq_len, "max_seq_len", 1)
        self.diffusion_block_size = as_int(self.diffusion_block_size, "diffusion_block_size", 1, optional=True)
        if self.encoder.dim != self.decoder.dim:
            raise ConfigError("decoder.dim", self.decoder.dim,
                              f"must equal encoder.dim {self.encoder.dim} (the decoder reads the encoder's byte states)")
        if self.patching.mode == "entropy" and self.entropy is None:
            raise ConfigError("entropy", None, "entropy patching needs an entropy model config")

    @property
    def n_input_ids(self) -> int:
        """Rows of the encoder byte table: 260, plus MASK and BLOCK_PAD for BLT-D."""
        return VOCAB_SIZE + (2 if self.diffusion_block_size else 0)

    @property
    def global_input_dim(self) -> int:
        return self.encoder.dim * self.cross_attn_k

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hash_ngram_sizes"] = list(self.hash_ngram_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BLTConfig":
        """The config of a JSON object (as :meth:`to_dict` writes it). Raises ConfigError naming the field."""
        if not isinstance(d, dict):
            raise ConfigError("BLTConfig", d, "must be an object")
        d = dict(d)
        for key in ("encoder", "global_", "decoder", "entropy"):
            if d.get(key) is not None:
                d[key] = _build(StackConfig, d[key], key)
        if "patching" in d:
            d["patching"] = _build(PatchingConfig, d["patching"], "patching")
        return _build(cls, d, "")


def _local(dim: int, layers: int, heads: int, window: int = 512) -> StackConfig:
    return StackConfig(dim=dim, n_layers=layers, n_heads=heads, window=window)


PRESETS: dict[str, BLTConfig] = {}


def preset(name: str, **overrides: Any) -> BLTConfig:
    """Return a fresh copy of a named preset (``tiny``, ``small``, ``1b``, ``3b``), with overrides.

    Raises ValueError for an unknown name.
    """
    if name not in _PRESET_BUILDERS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(_PRESET_BUILDERS)}")
    cfg = _PRESET_BUILDERS[name]()
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def _tiny() -> BLTConfig:
    # For tests: < 1M parameters in all.
    return BLTConfig(
        encoder=_local(32, 1, 2, window=64),
        global_=StackConfig(dim=64, n_layers=2, n_heads=2),
        decoder=_local(32, 2, 2, window=64),
        entropy=StackConfig(dim=32, n_layers=1, n_heads=2, rope_theta=10000.0, window=64),
        patching=PatchingConfig(threshold=5.0, max_patch_length=8),
        hash_ngram_sizes=(3, 4),
        hash_vocab=257,
        double_residual=False,
    )


def _small() -> BLTConfig:
    # The CPU default trained in this repo: ~5M non-hash parameters, 3.1M hash, 0.4M entropy model.
    return BLTConfig(
        encoder=_local(128, 1, 4),
        global_=StackConfig(dim=256, n_layers=4, n_heads=4),
        decoder=_local(128, 3, 4),
        entropy=StackConfig(dim=128, n_layers=2, n_heads=4, rope_theta=10000.0, window=512),
        patching=PatchingConfig(threshold=2.0, max_patch_length=8),
        hash_vocab=4096,
        max_seq_len=8192,
    )


def _paper_1b() -> BLTConfig:
    # Fast BLT §4.1 / BLT Table 10: global 25 × 2048 (Llama-1B shape), local 1024, k = 2, decoder 9 layers.
    return BLTConfig(
        encoder=_local(1024, 1, 16),
        global_=StackConfig(dim=2048, n_layers=25, n_heads=16),
        decoder=_local(1024, 9, 16),
        entropy=StackConfig(dim=768, n_layers=14, n_heads=12, rope_theta=10000.0, window=512),
    )


def _paper_3b() -> BLTConfig:
    # Global: Llama-3.2-3B-like stack (28 × 3072, 24 heads / 8 KV heads, FFN 8192); k = 2 with a
    # 2048 → 3072 input projection.
    return BLTConfig(
        encoder=_local(1024, 1, 16),
        global_=StackConfig(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, ffn_dim=8192),
        decoder=_local(1024, 9, 16),
        entropy=StackConfig(dim=768, n_layers=14, n_heads=12, rope_theta=10000.0, window=512),
    )


_PRESET_BUILDERS = {"tiny": _tiny, "small": _small, "1b": _paper_1b, "3b": _paper_3b}

OBJECTIVES = ("entropy", "blt", "bltd")  # what `fastblt train --objective` trains (training/objectives.py)

# Parameter counts the paper reports (Fast BLT §4.1), hash tables excluded.
PAPER_COUNTS = {
    "1b": {"local_encoder": 19e6, "global": 1.28e9, "local_decoder": 160e6},
    "3b": {"local_encoder": 26e6, "global": 2.82e9, "local_decoder": 160e6},
}
