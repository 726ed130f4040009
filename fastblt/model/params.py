"""Parameter counts by component: the numbers the bandwidth estimate needs (Fast BLT, arXiv 2605.08044,
eq. 8; the estimate itself is :func:`fastblt.generation.accounting.bandwidth_gb`).

Components: ``hash_tables`` (the fused hash n-gram embedding), ``local_encoder`` (byte table, encoder
layers, pooling projection and cross-attention; plus the global input projection when k·d_local ≠
d_global, which consumes the encoder output — this is how the paper's 3B encoder count of 26M
adds up), ``global`` (the global transformer's layers), ``local_decoder`` (latent projection,
cross-attention, layers, final norm and lm_head) and ``entropy_model``. Hash tables and the
entropy model are excluded from the bandwidth estimate, as in the paper.
"""
from __future__ import annotations

import torch

from ..config import BLTConfig
from .blt import BLT


def param_breakdown(model: BLT) -> dict[str, int]:
    """Parameter counts per component of ``model`` (works on meta-device models)."""
    counts = {"hash_tables": 0, "local_encoder": 0, "global": 0, "local_decoder": 0, "entropy_model": 0}
    for name, p in model.named_parameters():
        if name.startswith("encoder_hash_tok_embedding"):
            key = "hash_tables"
        elif name.startswith("local_encoder") or name.startswith("global_transformer.token_embedding_projection"):
            key = "local_encoder"
        elif name.startswith("global_transformer"):
            key = "global"
        elif name.startswith("local_decoder") or name.startswith("lm_head"):
            key = "local_decoder"
        elif name.startswith("patcher"):
            key = "entropy_model"
        else:  # pragma: no cover - every parameter belongs to a component
            raise AssertionError(f"unassigned parameter {name}")
        counts[key] += p.numel()
    return counts


def breakdown_for_config(cfg: BLTConfig) -> dict[str, int]:
    """Parameter counts for a config without allocating memory (the model is built on the meta device)."""
    with torch.device("meta"):
        return param_breakdown(BLT(cfg))
