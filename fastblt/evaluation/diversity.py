"""Diversity against cost (arXiv 2605.08044 Fig. 8, §4): word type-token ratio of unconditional
BLT-D samples against decoder NFEs, over a sweep of the unmasking threshold.

Each setting generates ``samples`` texts of ``n_bytes`` bytes from BOS alone (no prompt), sampling
at ``temperature`` with ``top_p``, EOS never generated (every sample has the same length, as the
NFE comparison needs). Settings: BLT-D confidence unmasking α ∈ :data:`ALPHAS` and entropy-bounded
γ ∈ :data:`GAMMAS` (the paper plots EB with top-p), and the reference, BLT sampling of the same model
(its causal path, one decoder NFE per byte) at the same temperature and top-p. Sample i of every
setting uses seed ``seed + i``.

Type-token ratio (TTR) = distinct words / words after whitespace splitting of the UTF-8 decoded
text (invalid bytes replaced); reported as the mean over samples (and its standard deviation),
next to the mean decoder NFEs per sample.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

ALPHAS = (0.3, 0.5, 0.7, 0.9)
GAMMAS = (0.5, 0.8, 1.2, 2.0)


def type_token_ratio(text: str) -> float:
    """Distinct whitespace-separated words / words (0.0 for a text without words)."""
    words = text.split()
    return len(set(words)) / len(words) if words else 0.0


def settings(block_size: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, generate() options) of the sweep; the BLT reference first."""
    out = [("BLT (reference)", "blt", {})]
    out += [(f"BLT-D-{block_size} conf α={a}", "blt-d", {"unmask": "confidence", "alpha": a}) for a in ALPHAS]
    out += [(f"BLT-D-{block_size} EB γ={g}", "blt-d", {"unmask": "entropy", "gamma": g}) for g in GAMMAS]
    return out


def run(model, samples: int = 4, n_bytes: int = 1024, temperature: float = 1.0, top_p: float | None = 0.9,
        seed: int = 0, progress=None) -> dict[str, dict[str, Any]]:
    """The sweep on a BLT-D ``model``: {label: {method, options, ttr, ttr_std, decoder_nfe,
    global_nfe, samples}}. ``progress(label)`` is called after each sample. Raises ValueError for a
    model without diffusion training, samples < 1 or temperature ≤ 0 (this study needs sampling)."""
    from ..generation.api import generate

    b = model.cfg.diffusion_block_size
    if not b:
        raise ValueError("the diversity study needs a BLT-D model (diffusion_block_size is not set)")
    if samples < 1:
        raise ValueError(f"need at least 1 sample per setting, got {samples}")
    if not temperature > 0:
        raise ValueError(f"the diversity study samples: temperature must be > 0, got {temperature}")
    out: dict[str, dict[str, Any]] = {}
    for label, method, opts in settings(b):
        ttrs, dec, glob = [], [], []
        for i in range(samples):
            r = generate(model, b"", method=method, max_new_bytes=n_bytes, temperature=temperature, top_p=top_p,
                         seed=seed + i, ignore_eos=True, **opts)
            ttrs.append(type_token_ratio(r.text))
            dec.append(r.stats["decoder_nfe"])
            glob.append(r.stats["global_nfe"])
            if progress:
                progress(label)
        out[label] = {"method": method, "options": opts, "ttr": statistics.fmean(ttrs),
                      "ttr_std": statistics.pstdev(ttrs), "decoder_nfe": statistics.fmean(dec),
                      "global_nfe": statistics.fmean(glob), "samples": samples}
    return out


def markdown(rows: dict[str, dict[str, Any]], header: str) -> str:
    lines = [header, "", "| setting | decoder NFE | E+G NFE | TTR (mean ± std) |", "|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['decoder_nfe']:.1f} | {r['global_nfe']:.1f} | {r['ttr']:.3f} ± {r['ttr_std']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """TTR against decoder NFEs: one line per unmasking rule, the BLT reference as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for rule, marker in (("confidence", "o"), ("entropy", "s")):
        pts = sorted((r["decoder_nfe"], r["ttr"], lb) for lb, r in rows.items() if r["options"].get("unmask") == rule)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"BLT-D {rule} unmasking")
            for x, y, lb in pts:
                ax.annotate(lb.split()[-1], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for lb, r in rows.items():
        if r["method"] == "blt":
            ax.scatter([r["decoder_nfe"]], [r["ttr"]], marker="*", s=150, color="k", label=lb, zorder=3)
    ax.set_xlabel("decoder NFEs per sample")
    ax.set_ylabel("type-token ratio (words)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
