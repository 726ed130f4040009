"""Self-distillation rows for BLT-D: the model's own greedy continuations of training text.

BLT-DV accepts a drafted byte when it equals the verifier's greedy byte given the bytes before it
(Fast BLT §5.2, Algorithm 2), and at inference those bytes are the model's *own* greedy text, not
corpus text. So the block head is also trained on rows whose second half is the model's greedy
continuation of a corpus window, as Medusa-2 / EAGLE drafters are trained on the target model's
outputs. Nothing about losslessness depends on it: the verifier decides what is emitted.

    python -m fastblt.training.self_data --model runs/bltd/last --out runs/self_data --minutes 30

A row is ``BOS + prompt (prompt_bytes corpus bytes) + greedy continuation (new_bytes)``, BLT ids,
LongTensor [prompt_bytes + new_bytes + 1]. Rows are written in chunks ``rows_XXXXX.npy`` (int64
[n, L]) plus ``meta.json`` ({"prompt_len": 1 + prompt_bytes, "row_len": L, "model": ...}); a run
continues numbering where a previous one stopped. Training (``fastblt train --self-data DIR
--self-rows K``) replaces K rows of every batch with these rows and does not score the clean
next-byte loss on the generated part (the model is not trained to imitate itself, only its
block head is).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..config import BOS_ID, OFFSET

META = "meta.json"


def load_self_rows(folder: str | Path, seq_len: int) -> tuple[torch.Tensor, int]:
    """All rows of a self-data folder: (LongTensor [n, seq_len + 1], prompt_len).

    Raises FileNotFoundError / ValueError for a missing folder, no rows, or rows of another length.
    """
    d = Path(folder)
    if not (d / META).exists():
        raise FileNotFoundError(f"--self-data {d}: no {META} (make it with python -m fastblt.training.self_data)")
    meta = json.loads((d / META).read_text())
    if int(meta["row_len"]) != seq_len + 1:
        raise ValueError(f"--self-data {d} has rows of {meta['row_len']} ids; --seq-len {seq_len} needs {seq_len + 1}")
    chunks = sorted(d.glob("rows_*.npy"))
    if not chunks:
        raise ValueError(f"--self-data {d} holds no rows_*.npy chunks")
    rows = np.concatenate([np.load(c, allow_pickle=False) for c in chunks])
    return torch.from_numpy(rows.astype(np.int64)), int(meta["prompt_len"])


def _write_chunk(out: Path, index: int, rows: list[list[int]]) -> None:
    """rows_{index}.npy (int64 [n, L]), written atomically."""
    tmp = out / f".rows_{index:05d}.tmp.npy"
    np.save(tmp, np.asarray(rows, dtype=np.int64))
    os.replace(tmp, out / f"rows_{index:05d}.npy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder whose greedy output the rows hold")
    p.add_argument("--out", required=True, help="folder for rows_*.npy and meta.json (appended to)")
    p.add_argument("--data", default="data_cache/corpus", help="corpus (prompts from its train split)")
    p.add_argument("--prompt-bytes", type=int, default=256)
    p.add_argument("--new-bytes", type=int, default=256)
    p.add_argument("--minutes", type=float, default=30.0, help="stop after this wall-clock time")
    p.add_argument("--max-rows", type=int, default=100_000)
    p.add_argument("--chunk", type=int, default=16, help="rows per chunk file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    import fastblt

    from ..data.dataset import ByteDataset

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    row_len = 1 + a.prompt_bytes + a.new_bytes
    meta = {"prompt_len": 1 + a.prompt_bytes, "row_len": row_len, "model": str(a.model)}
    if (out / META).exists():
        old = json.loads((out / META).read_text())
        if (old["prompt_len"], old["row_len"]) != (meta["prompt_len"], meta["row_len"]):
            print(f"self_data: error: {out} holds rows of another shape ({old})", file=sys.stderr)
            return 1
    (out / META).write_text(json.dumps(meta))
    model = fastblt.load(a.model).float().eval()
    ds = ByteDataset(Path(a.data) / "train")
    long_docs = np.nonzero(ds.doc_len > a.prompt_bytes)[0]
    n_chunk = len(list(out.glob("rows_*.npy")))
    rng = np.random.default_rng([a.seed, n_chunk])
    t0, done, buf = time.time(), 0, []
    while time.time() - t0 < 60 * a.minutes and done < a.max_rows:
        doc = int(rng.choice(long_docs))
        off = int(rng.integers(0, ds.doc_len[doc] - a.prompt_bytes + 1))
        prompt = ds[doc][off:off + a.prompt_bytes]
        r = fastblt.generate(model, prompt, method="blt", max_new_bytes=a.new_bytes, ignore_eos=True)
        buf.append([BOS_ID] + [b + OFFSET for b in prompt + r.bytes])
        done += 1
        if len(buf) == a.chunk:
            _write_chunk(out, n_chunk, buf)
            n_chunk, buf = n_chunk + 1, []
            print(f"self_data: {n_chunk * a.chunk} rows, {done * a.new_bytes / (time.time() - t0):.0f} bytes/s",
                  flush=True)
    if buf:
        _write_chunk(out, n_chunk, buf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
