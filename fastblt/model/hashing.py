"""Hash n-gram embedding ids of the local encoder (BLT §3.2.1, eq. 3–4).

For every byte position i and n-gram size n, the window of n ids ending at i (oldest first, the
sequence left-padded with BOE = 0) is hashed with a rolling polynomial hash
``Σ_j window[j] · prime^j`` in int64 with silent wrap-around (as the released weights expect),
then reduced modulo the table size. All (function, n) tables live in one fused embedding; table t
owns rows [t · vocab, (t + 1) · vocab).

:func:`hash_ngram_ids` hashes whole sequences (tensors); :func:`hash_ngram_rows` hashes only
given positions (the same int64 arithmetic, as one small NumPy integer product), for incremental
generation, where each new byte needs just its own n-grams.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

# The official primes; hash function f uses PRIMES[f].
PRIMES = (1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899, 9576890767,
          3628273133, 2860486313, 5463458053, 3367900313)


_MASK64, _SIGN64 = (1 << 64) - 1, 1 << 63


def _wrap64(x: int) -> int:
    """x as a two's-complement int64 (what torch's int64 arithmetic wraps to)."""
    x &= _MASK64
    return x - (1 << 64) if x & _SIGN64 else x


@lru_cache(maxsize=None)
def _powers(prime: int, n: int) -> tuple[int, ...]:
    """(prime^0, …, prime^(n−1)) as wrapped int64 values."""
    out = [1]
    for _ in range(1, n):
        out.append(_wrap64(out[-1] * prime))
    return tuple(out)


def _prime_powers(prime: int, n: int, device: torch.device) -> torch.Tensor:
    """[prime^0, …, prime^(n−1)] in int64 with wrap-around."""
    return torch.tensor(_powers(prime, n), dtype=torch.int64, device=device)


def hash_ngram_ids(ids: torch.Tensor, ngram_sizes: tuple[int, ...], vocab: int, n_functions: int = 1) -> torch.Tensor:
    """Fused-table row indices of the hash n-gram embeddings.

    ids: LongTensor [B, N] of BLT ids. Returns LongTensor [B, N, n_functions · len(ngram_sizes)]:
    entry t is the row in the fused table (already offset by t · vocab). Table order: outer loop over
    hash functions, inner loop over n (the released layout).
    """
    b, n_pos = ids.shape
    cols = []
    for f in range(n_functions):
        prime = PRIMES[f % len(PRIMES)]
        for n in ngram_sizes:
            padded = torch.cat([ids.new_zeros(b, n - 1), ids], dim=1)
            windows = padded.unfold(1, n, 1)  # [B, N, n], oldest first
            h = (windows * _prime_powers(prime, n, ids.device)).sum(-1)
            cols.append(torch.remainder(h, vocab) + len(cols) * vocab)
    return torch.stack(cols, dim=-1)


@lru_cache(maxsize=None)
def _power_matrix(ngram_sizes: tuple[int, ...], n_functions: int) -> np.ndarray:
    """int64 [max_n, n_tables]: column t holds table t's powers prime^0 .. prime^(n−1) in its last n
    rows, so that a window of the last max_n ids (oldest first) times the matrix is every hash."""
    m = max(ngram_sizes)
    cols = []
    for f in range(n_functions):
        prime = PRIMES[f % len(PRIMES)]
        for n in ngram_sizes:
            cols.append([0] * (m - n) + list(_powers(prime, n)))
    return np.array(cols, dtype=np.int64).T.copy()


def hash_ngram_rows(ids: Sequence[int], start: int, ngram_sizes: tuple[int, ...], vocab: int,
                    n_functions: int = 1) -> np.ndarray:
    """Fused-table rows for positions start .. len(ids) − 1 only: equal to
    ``hash_ngram_ids(torch.tensor([ids]), …)[0, start:]``, as an int64 array [T, n_tables].

    ids: BLT ids (the n-gram windows read up to max(ngram_sizes) − 1 ids before ``start``; earlier
    ones may be omitted by passing a suffix and shifting ``start``, since a window left of
    position 0 reads BOE = 0). One int64 product of the windows [T, max_n] with a power matrix
    (NumPy integer arithmetic wraps around as torch's does).
    """
    m = max(ngram_sizes)
    lo = start - (m - 1)
    window = np.zeros(len(ids) - lo, dtype=np.int64)  # ids lo .. end − 1, BOE = 0 left of position 0
    window[max(0, -lo):] = ids[max(0, lo):]
    t = len(window) - m + 1
    windows = window.reshape(1, m) if t == 1 else window[np.arange(t)[:, None] + np.arange(m)]  # [T, max_n]
    rows = windows @ _power_matrix(tuple(ngram_sizes), n_functions)
    rows = np.remainder(rows, vocab, out=rows)
    rows += np.arange(rows.shape[1], dtype=np.int64) * vocab
    return rows
