"""Calibrate the global entropy threshold θ (Fast BLT, arXiv 2605.08044 §4: entropy patching with a mean
patch size of 4 bytes and a maximum of 8; BLT, arXiv 2412.09871 §2.3: the global threshold rule).

The paper patches with mean patch size 4 bytes and max patch length 8. Given a trained entropy
model, we compute next-byte entropies (nats) once on a sample of training rows, then bisect θ so
that the mean patch size under ``PatchingConfig(threshold=θ, max_patch_length=8)`` is 4 bytes.
Mean patch size = bytes / patches over all rows, the BOS patch excluded (bytes 1..N of each row,
the last patch closed at the row end). Larger θ ⇒ fewer boundaries ⇒ larger patches (monotone).

Writes ``calibration.json`` (threshold, mean, histogram) and ``patch_hist.txt`` into the run folder.

    fastblt calibrate --entropy-model runs/entropy --data data_cache/corpus
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint
from ..config import PatchingConfig
from ..patching.patches import compute_starts


def patch_sizes(starts: torch.Tensor) -> torch.Tensor:
    """Sizes (bytes) of all patches of bytes 1..N−1 (BOS patch excluded). starts [B, N + 1] → LongTensor [P]."""
    sizes = []
    n = starts.shape[1] - 1
    for r in range(starts.shape[0]):
        idx = torch.nonzero(starts[r, 1:n], as_tuple=False).flatten() + 1
        bounds = torch.cat([idx, torch.tensor([n])])
        sizes.append(bounds[1:] - bounds[:-1])
    return torch.cat(sizes)


def mean_patch_size(ids: torch.Tensor, ent: torch.Tensor, threshold: float, max_len: int | None) -> float:
    """Mean patch size in bytes for ids [B, N] with entropies ent [B, N] under the global rule."""
    starts = compute_starts(PatchingConfig(threshold=threshold, max_patch_length=max_len), ids, ent)
    n = ids.shape[1]
    patches = starts[:, 1:n].sum()
    return float((n - 1) * ids.shape[0] / max(int(patches), 1))


def calibrate_threshold(ids: torch.Tensor, ent: torch.Tensor, target: float = 4.0, max_len: int | None = 8,
                        iters: int = 50) -> float:
    """Bisection on θ ∈ [0, ln 260] for mean patch size = ``target`` bytes."""
    lo, hi = 0.0, math.log(260.0) + 1e-3
    if mean_patch_size(ids, ent, hi, max_len) < target:
        raise ValueError(f"no threshold reaches a mean patch size of {target} (max_patch_length {max_len})")
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mean_patch_size(ids, ent, mid, max_len) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def histogram_text(hist: dict[int, int], width: int = 50) -> str:
    total = sum(hist.values()) or 1
    top = max(hist.values()) or 1
    lines = ["size  count      share"]
    for k in sorted(hist):
        lines.append(f"{k:>4}  {hist[k]:>8}  {hist[k] / total:7.2%}  " + "#" * round(width * hist[k] / top))
    return "\n".join(lines)


@torch.no_grad()
def calibrate(entropy_model: str | Path, data: str | Path = "data_cache/corpus", rows: int = 64, seq_len: int = 1024,
              target: float = 4.0, max_patch_length: int = 8, seed: int = 12345, write: bool = True) -> dict[str, Any]:
    """Calibrate θ for the entropy run at ``entropy_model`` on ``rows`` × ``seq_len`` training bytes.

    Returns {threshold, max_patch_length, mean_patch_size, histogram, ...}; writes calibration.json and
    patch_hist.txt into the run folder when ``write``.
    """
    from ..data.dataset import open_split
    from .state import resolve_model_dir

    run = Path(entropy_model)
    model = checkpoint.load(resolve_model_dir(run))
    ds = open_split(data, "train")
    batch = ds.sample_batch(0, rows, seq_len, seed=seed)[:, :-1]
    ent = torch.cat([model.entropies(batch[i : i + 8]) for i in range(0, rows, 8)])
    theta = calibrate_threshold(batch, ent, target, max_patch_length)
    starts = compute_starts(PatchingConfig(threshold=theta, max_patch_length=max_patch_length), batch, ent)
    sizes = patch_sizes(starts)
    hist = {int(k): int(v) for k, v in zip(*torch.unique(sizes, return_counts=True))}
    res = {"threshold": theta, "max_patch_length": max_patch_length, "target_mean_patch_size": target,
           "mean_patch_size": float(sizes.float().mean()), "histogram": hist, "rows": rows, "seq_len": seq_len,
           "sample_seed": seed, "mean_entropy_nats": float(ent[:, 1:].mean())}
    if write:
        checkpoint.atomic_write_bytes(run / "calibration.json", json.dumps(res, indent=2).encode())
        (run / "patch_hist.txt").write_text(
            f"threshold {theta:.5f} nats, mean patch size {res['mean_patch_size']:.3f} bytes "
            f"(max {max_patch_length}), {rows}×{seq_len} training bytes\n" + histogram_text(hist) + "\n")
    return res


def main(argv: list[str] | None = None) -> int:
    """``python -m fastblt.training.calibrate ...``: the same as ``fastblt calibrate ...``."""
    from ..cli import main as cli_main

    return cli_main(["calibrate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
