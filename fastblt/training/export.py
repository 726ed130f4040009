"""Export a trained run as a shipped model and report its held-out figures.

    fastblt export --run runs/bltd --out fastblt/assets/default_model

Loads ``RUN/last``, measures held-out bits per byte on ``code_test`` and ``prose_test``
(:func:`fastblt.data.heldout.load_heldout`; each record is scored as BOS + bytes + EOS, cut to
``--max-bytes``, next-byte CE in bits averaged over all predicted bytes), and for BLT-D the
masked-slot accuracy in the training and inference layouts on val rows; then saves the model in
bf16 with these figures in ``config.json["training"]`` (must stay ≤ ``--max-mb``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint
from ..data.dataset import VAL_SEED, open_split
from ..data.heldout import load_heldout
from ..evaluation.likelihood import sequence_nll
from .objectives import LN2, masked_slot_accuracy, slot_accuracy_report
from .state import recover, resolve_model_dir, swap_in


@torch.no_grad()
def heldout_bpb(model, name: str, max_bytes: int = 2048) -> float:
    """Bits per byte of ``model`` on the held-out set ``name`` (records {"id", "text"}; EOS scored too)."""
    nats, count = 0.0, 0
    for rec in load_heldout(name):
        n, c = sequence_nll(model, rec["text"].encode("utf-8")[:max_bytes], append_eos=True)
        nats, count = nats + n, count + c
    return nats / count / LN2


def evaluate_model(model, data: str | Path | None, block_size: int | None, rows: int = 4, seq_len: int = 512,
                   max_blocks: int = 64) -> dict[str, Any]:
    """Held-out bpb (code, prose) and, for BLT-D, masked-slot accuracy in both layouts (t = 0.5)."""
    res: dict[str, Any] = {"code_test_bpb": heldout_bpb(model, "code_test"),
                           "prose_test_bpb": heldout_bpb(model, "prose_test")}
    if block_size and data is not None:
        batch = open_split(data, "val").sample_batch(0, rows, seq_len, seed=VAL_SEED)
        for lay in ("training", "inference"):
            res[f"masked_acc_{lay}"] = masked_slot_accuracy(model, batch, block_size, lay, max_blocks=max_blocks)
        # one-step drafts (every slot masked), split by start kind and latent; inference == training layout
        rep = slot_accuracy_report(model, batch, block_size, n_blocks=16)
        for kind, by_start in rep.items():
            for where, r in by_start.items():
                res[f"slot1_acc_{kind}_{where}"] = r["training"][0]
                res[f"slot_mean_acc_{kind}_{where}"] = sum(r["training"]) / block_size
                res[f"slot1_greedy_{kind}_{where}"] = r["greedy"][0]
                res[f"layout_gap_{kind}_{where}"] = max(abs(x - y) for x, y in zip(r["training"], r["inference"]))
    return res


def export_run(run: str | Path, out: str | Path, data: str | Path | None = "data_cache/corpus",
               max_mb: float = 25.0) -> tuple[float, dict[str, Any]]:
    """Export ``RUN/last`` to ``out`` in bf16 with its held-out figures; returns (size in MB, figures).

    The folder is written next to ``out``, its size checked, then swapped in, so a failed export
    leaves ``out`` as it was. Raises ValueError when the export is over ``max_mb``,
    FileNotFoundError for a missing run, checkpoint.DiskFullError for a full disk.
    """
    run, out = Path(run), Path(out)
    model = checkpoint.load(resolve_model_dir(run))
    model = model.to(torch.bfloat16).float()  # score the weights as shipped (bf16)
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    figures = evaluate_model(model, data, model.cfg.diffusion_block_size)
    rc, result = info.get("run_config", {}), info.get("result", {})
    extra = {"training": {"objective": rc.get("objective"), "preset": rc.get("preset"),
                          "steps": result.get("step"), "batch_size": rc.get("batch_size"),
                          "seq_len": rc.get("seq_len"), "lr": rc.get("lr"), "val_bpb": result.get("val_bpb"),
                          "wall_s": result.get("wall_s"), "bytes_per_s": result.get("bytes_per_s"),
                          "stop_reason": result.get("stop_reason"),
                          **{k: rc.get(k) for k in ("blocks", "block_stride", "fused_frac", "mask_norm", "distill",
                                                    "init_from") if rc.get("objective") == "bltd"},
                          **figures}}
    recover(out)  # a crashed earlier export: restore DEST, remove its leftovers
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with checkpoint.writing(out.parent, tmp):
        checkpoint.save(model, tmp, dtype=torch.bfloat16, extra=extra)
        size = sum(f.stat().st_size for f in tmp.iterdir()) / 2**20
        if size > max_mb:
            raise ValueError(f"exported model is {size:.1f} MB, over the {max_mb} MB limit; {out} left as it was")
        swap_in(tmp, out)
    return size, figures


def main(argv: list[str] | None = None) -> int:
    """``python -m fastblt.training.export ...``: the same as ``fastblt export ...``."""
    from ..cli import main as cli_main

    return cli_main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
