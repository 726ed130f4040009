"""Training: objectives, BLT-D loss normalisation, resume exactness, NaN stop, DDP, checkpoints."""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from fastblt import checkpoint
from fastblt.config import BLOCK_PAD_ID, MASK_ID
from fastblt.training import state as S
from fastblt.training import train as T
from fastblt.training.objectives import masked_diffusion_loss, masked_slot_accuracy

torch.set_num_threads(1)  # 2 shared cores: OpenMP oversubscription is catastrophically slow


def _write_split(root: Path, name: str, docs: list[bytes]) -> None:
    data = b"".join(docs)
    (root / f"{name}.bin").write_bytes(data)
    np.save(root / f"{name}.idx.npy", np.cumsum([0] + [len(d) for d in docs]).astype(np.int64))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = [b"def ", b"return ", b"the ", b"cat ", b"sat ", b"on ", b"mat.\n", b"x = 1\n", b"print(x)\n", b"and "]
    docs = [b"".join(words[i] for i in rng.integers(0, len(words), 60)) for _ in range(40)]
    _write_split(root, "train", docs[:32])
    _write_split(root, "val", docs[32:])
    return root


def _args(out: Path, data: Path, **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    T.add_arguments(p)
    argv = ["--out", str(out), "--data", str(data), "--preset", "tiny", "--batch-size", "4", "--seq-len", "48",
            "--steps", "6", "--eval-every", "0", "--eval-batches", "1", "--save-every", "3", "--no-progress",
            "--no-plot", "--threads", "1", "--lr", "3e-3"]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def entropy_run(corpus, tmp_path_factory) -> Path:
    from fastblt.training.calibrate import calibrate

    out = tmp_path_factory.mktemp("ent")
    assert T.run(_args(out, corpus, objective="entropy", steps=8)) == 0
    cal = calibrate(out, corpus, rows=4, seq_len=128)
    assert (out / "calibration.json").exists() and (out / "patch_hist.txt").exists()
    assert abs(cal["mean_patch_size"] - 4.0) < 0.5
    return out


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(out / "last").state_dict()


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines() if "loss" in x]


@pytest.mark.parametrize("objective", ["entropy", "blt", "bltd"])
def test_objectives_finite_and_decreasing(objective, corpus, entropy_run, tmp_path):
    kw = {} if objective == "entropy" else {"entropy_model": entropy_run}
    assert T.run(_args(tmp_path, corpus, objective=objective, steps=8, block_size=4, lr="1e-2", **kw)) == 0
    losses = _losses(tmp_path)
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    assert (tmp_path / "run.json").exists()


def test_masked_loss_ignores_pad_and_weights_by_inverse_t():
    # 2 rows × 4 slots; uniform logits ⇒ CE = ln 260 at every scored slot
    targets = torch.tensor([[10, 11, BLOCK_PAD_ID, BLOCK_PAD_ID], [12, 13, 14, 15]])
    slots = torch.tensor([[MASK_ID, 11, BLOCK_PAD_ID, BLOCK_PAD_ID], [MASK_ID, MASK_ID, 14, 15]])
    t = torch.tensor([0.5, 0.25])
    logits = torch.zeros(2, 4, 260)
    got = masked_diffusion_loss(logits, targets, slots, t)
    expected = math.log(260) * (1 / 0.5 + 2 / 0.25) / 6  # 6 valid (non-pad) slots
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # logits at BLOCK_PAD and unmasked slots do not matter
    logits2 = logits.clone()
    logits2[0, 2:] = torch.randn(2, 260) * 5
    logits2[1, 2:] = torch.randn(2, 260) * 5
    assert masked_diffusion_loss(logits2, targets, slots, t).item() == pytest.approx(expected, rel=1e-6)
    # a MASK id written onto a pad slot is still not scored
    slots3 = slots.clone()
    slots3[0, 3] = MASK_ID
    assert masked_diffusion_loss(logits, targets, slots3, t).item() == pytest.approx(expected, rel=1e-6)


def test_bltd_corruption_never_masks_pad(entropy_run):
    from fastblt.training.objectives import corrupt_rows

    targets = torch.tensor([[5, 6, 7, BLOCK_PAD_ID, BLOCK_PAD_ID, 9, 9, 9]])
    out = corrupt_rows(targets, torch.tensor([1.0]), 0, 0, [0])
    assert (out[targets == BLOCK_PAD_ID] == BLOCK_PAD_ID).all()
    assert (out[targets != BLOCK_PAD_ID] == MASK_ID).all()


def test_resume_is_exact(corpus, entropy_run, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = dict(objective="bltd", entropy_model=entropy_run, block_size=4, steps=6, save_every=100)
    assert T.run(_args(straight, corpus, **common)) == 0
    assert T.run(_args(split, corpus, stop_after_steps=3, **common)) == 0
    assert S.load_trainer_state(split / "last")["step"] == 3
    assert T.run(_args(split, corpus, resume=True, **common)) == 0
    a, b = _weights(straight), _weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_rejects_other_config(corpus, entropy_run, tmp_path):
    assert T.run(_args(tmp_path, corpus, objective="entropy", steps=2)) == 0
    with pytest.raises(ValueError, match="differs"):
        T.run(_args(tmp_path, corpus, objective="entropy", steps=2, seq_len=32, resume=True))


def test_nan_stops_and_keeps_last_checkpoint(corpus, tmp_path):
    with pytest.raises(RuntimeError, match="non-finite loss"):
        T.run(_args(tmp_path, corpus, objective="entropy", steps=6, save_every=2, debug_nan_at_step=3))
    st = S.load_trainer_state(tmp_path / "last")
    assert st["step"] == 2
    # the kept checkpoint is the good one of step 2: resume runs to the end
    assert T.run(_args(tmp_path, corpus, objective="entropy", steps=6, save_every=2, resume=True)) == 0


def test_checkpoint_is_atomic(corpus, tmp_path, monkeypatch):
    assert T.run(_args(tmp_path, corpus, objective="entropy", steps=2)) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.startswith(".") and n != S.LOCK_NAME], names
    assert sorted(p.name for p in (tmp_path / "last").iterdir()) == sorted(
        ["config.json", "model.safetensors", S.STATE_NAME, S.TENSORS_NAME])
    before = _weights(tmp_path)

    # a crash while writing the next checkpoint leaves the previous one intact
    def boom(*a, **k):
        raise OSError("simulated crash")

    monkeypatch.setattr(S, "write_trainer_state", boom)
    model = checkpoint.load(tmp_path / "last")
    opt = S.build_optimizer(model, 1e-3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError):
        S.save_checkpoint(tmp_path, model, opt, 99, {})
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".last")]  # the temporary is removed
    after = _weights(tmp_path)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert S.load_trainer_state(tmp_path / "last")["step"] == 2


def test_masked_slot_accuracy_both_layouts(corpus, entropy_run, tmp_path):
    assert T.run(_args(tmp_path, corpus, objective="bltd", entropy_model=entropy_run, block_size=4, steps=2)) == 0
    model = checkpoint.load(tmp_path / "last")
    rows = T.open_split(corpus, "val").sample_batch(0, 2, 48)
    a = masked_slot_accuracy(model, rows, 4, "training", max_blocks=6)
    b = masked_slot_accuracy(model, rows, 4, "inference", max_blocks=6)
    assert 0.0 <= a <= 1.0 and 0.0 <= b <= 1.0
    assert abs(a - b) < 0.1  # same blocks, same slot contents: no label leak


def test_bad_inputs(corpus, entropy_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.run(_args(tmp_path, tmp_path / "nope", objective="entropy"))
    empty = tmp_path / "empty"
    empty.mkdir()
    _write_split(empty, "train", [])
    _write_split(empty, "val", [b"x"])
    with pytest.raises(ValueError, match="empty"):
        T.run(_args(tmp_path / "o", empty, objective="entropy"))
    with pytest.raises(ValueError, match="--entropy-model"):
        T.run(_args(tmp_path / "o", corpus, objective="blt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, argv: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    out, data = argv.pop("out"), argv.pop("data")
    T.run(_args(Path(out), Path(data), **argv))


def test_ddp_two_processes_match_one(corpus, entropy_run, tmp_path):
    # Small lr: Adam's first updates are ≈ lr·sign(g), so float-rounding differences of the gradient
    # all-reduce flip a few near-zero-gradient elements by up to ~2·lr; at lr 5e-5 that stays < 1e-6.
    common = dict(objective="bltd", entropy_model=str(entropy_run), block_size=4, steps=3, save_every=100, lr="5e-5")
    one = tmp_path / "one"
    assert T.run(_args(one, corpus, **common)) == 0
    two = tmp_path / "two"
    mp.spawn(_ddp_worker, args=(2, _free_port(), dict(out=str(two), data=str(corpus), **common)), nprocs=2, join=True)
    a, b = _weights(one), _weights(two)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # the logged (all-reduced) losses equal the single-process losses: same rows, same L_mask normalisation
    assert _losses(one) == pytest.approx(_losses(two), rel=1e-5)


def test_config_too_large_for_memory(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(T.os, "sysconf", lambda name: 16)  # 16 pages × 16 bytes of "available" RAM
    with pytest.raises(RuntimeError, match="too large for memory"):
        T.run(_args(tmp_path, corpus, objective="entropy"))
