"""Run folders, atomic checkpoints and the optimisation schedule (Fast BLT §4 / paper notes §8.2).

Layout of a run folder ``--out``:
    last/config.json, last/model.safetensors   weights (fastblt.checkpoint format, fp32)
    last/trainer_state.pt                       optimizer, step, RNG states, run config
    log.jsonl, loss.png, run.json               training log, curves, final figures

``last/`` is replaced as a whole: a new checkpoint is written into a hidden temporary folder, then
the old ``last`` is renamed to ``.last.old``, the new one renamed to ``last``, and the old one
deleted. A crash at any point leaves either ``last`` or ``.last.old`` complete; :func:`find_last`
picks whichever exists.
"""
from __future__ import annotations

import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint

STATE_NAME = "trainer_state.pt"


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup over ``warmup`` steps to
    ``peak``, then cosine decay to 0 at ``total`` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    frac = min(1.0, (step - warmup) / (total - warmup))
    return 0.5 * peak * (1.0 + math.cos(math.pi * frac))


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW(β 0.9/0.95, ε 1e-8); weight decay on matrices (dim ≥ 2, embeddings included) only."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def find_last(out: Path) -> Path | None:
    """The newest complete checkpoint folder of a run (``last`` or, after a crash mid-swap, ``.last.old``)."""
    for name in ("last", ".last.old"):
        d = Path(out) / name
        if (d / STATE_NAME).exists() and (d / checkpoint.WEIGHTS_NAME).exists():
            return d
    return None


def save_checkpoint(out: Path, model, optimizer: torch.optim.Optimizer, step: int, run_config: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> Path:
    """Write weights + trainer state for ``step`` completed steps into ``out/last`` atomically."""
    out = Path(out)
    tmp = out / f".last.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    checkpoint.save(model, tmp, extra={"training": {"step": step, **(extra or {})}})
    state = {"optimizer": optimizer.state_dict(), "step": step, "rng": rng_state(),
             "run_config": run_config}
    part = tmp / f".{STATE_NAME}.part"
    torch.save(state, part)
    os.replace(part, tmp / STATE_NAME)
    last, old = out / "last", out / ".last.old"
    if last.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(last, old)
    os.replace(tmp, last)  # until here, .last.old (or last) holds the previous good checkpoint
    if old.exists():
        shutil.rmtree(old)
    return last


def load_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    return torch.load(Path(ckpt_dir) / STATE_NAME, map_location="cpu", weights_only=False)
