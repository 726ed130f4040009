"""Byte-level datasets over the splits written by ``fastblt data build``.

A split ``PREFIX`` is ``PREFIX.bin`` (uint8, documents concatenated) plus ``PREFIX.idx.npy`` (int64
start offset of each document in bytes; n_docs+1 entries, the last is the total byte count).

Training sees the split as one token stream in which every document is written
``BOS + bytes + EOS``; BLT ids are byte b -> b + 4, BOE/pad = 0, BOS = 1, EOS = 2 (3 is unused).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import BOS_ID as BOS
from ..config import EOS_ID as EOS
from ..config import OFFSET

DEFAULT_ROOT = "data_cache/corpus"
VAL_SEED = 1_000_003  # val batches: fixed rows, independent of the training seed


class ByteDataset:
    """One split: documents as bytes, and deterministic training windows of BLT ids."""

    def __init__(self, prefix: str | Path):
        prefix = str(prefix).removesuffix(".bin")
        self.idx = np.load(prefix + ".idx.npy")
        n_bytes = int(self.idx[-1])
        size = Path(prefix + ".bin").stat().st_size
        if size != n_bytes:
            raise ValueError(f"{prefix}.bin has {size} bytes but the index says {n_bytes}")
        # np.memmap cannot map an empty file
        self.data = np.memmap(prefix + ".bin", dtype=np.uint8, mode="r") if n_bytes else np.zeros(0, np.uint8)
        self.n_docs = len(self.idx) - 1
        self.doc_len = np.diff(self.idx)
        # stream position (in tokens) of each document's BOS: its byte offset + 2 per earlier document
        self.stream_start = self.idx[:-1] + 2 * np.arange(self.n_docs, dtype=np.int64)
        self.stream_len = n_bytes + 2 * self.n_docs

    def __len__(self) -> int:
        return self.n_docs

    def __getitem__(self, i: int) -> bytes:
        """Document ``i`` as raw bytes."""
        return self.data[self.idx[i]:self.idx[i + 1]].tobytes()

    def documents(self) -> Iterator[bytes]:
        for i in range(self.n_docs):
            yield self[i]

    def stream_ids(self, start: int, length: int) -> np.ndarray:
        """``length`` ids of the BOS+doc+EOS stream from token position ``start`` (wrapping at the end)."""
        if self.stream_len == 0:
            raise ValueError("empty split")
        pos = (start + np.arange(length, dtype=np.int64)) % self.stream_len
        doc = np.searchsorted(self.stream_start, pos, side="right") - 1
        off = pos - self.stream_start[doc]  # 0 = BOS, 1..len = bytes, len+1 = EOS
        ids = np.full(length, EOS, dtype=np.int64)
        ids[off == 0] = BOS
        is_byte = (off >= 1) & (off <= self.doc_len[doc])
        ids[is_byte] = self.data[self.idx[doc[is_byte]] + off[is_byte] - 1].astype(np.int64) + OFFSET
        return ids

    def sample_batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0) -> torch.LongTensor:
        """Training batch ``[batch_size, seq_len + 1]`` of BLT ids (inputs ``[:, :-1]``, targets ``[:, 1:]``).

        Row ``r`` is BOS followed by ``seq_len`` tokens of the stream from a start drawn from
        ``(seed, step, r)`` alone, so resuming at any step reproduces the same batches."""
        if self.stream_len == 0:
            raise ValueError("cannot sample from an empty split")
        rows = np.empty((batch_size, seq_len + 1), dtype=np.int64)
        rows[:, 0] = BOS
        for r in range(batch_size):
            start = int(np.random.default_rng([seed, step, r]).integers(self.stream_len))
            rows[r, 1:] = self.stream_ids(start, seq_len)
        return torch.from_numpy(rows)


def open_split(data: str | Path, split: str) -> ByteDataset:
    """The split ``split`` of corpus folder ``data``, with clear errors for a missing folder or split
    (FileNotFoundError) or an empty split (ValueError)."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder {root} does not exist: build it with `fastblt data build`")
    if not (root / f"{split}.bin").exists() or not (root / f"{split}.idx.npy").exists():
        raise FileNotFoundError(f"{root} has no '{split}' split ({split}.bin + {split}.idx.npy)")
    ds = ByteDataset(root / split)
    if ds.stream_len == 0 or int(ds.idx[-1]) == 0:
        raise ValueError(f"the '{split}' split of {root} is empty")
    return ds


def iter_documents(split: str | Path, root: str | Path = DEFAULT_ROOT) -> Iterator[bytes]:
    """Documents (raw bytes) of a split, in file order. ``split`` is a name ("val", "test", "train")
    looked up in ``root``, or a split prefix path."""
    prefix = Path(split)
    if not Path(str(prefix).removesuffix(".bin") + ".idx.npy").exists():
        prefix = Path(root) / str(split)
    yield from ByteDataset(prefix).documents()
