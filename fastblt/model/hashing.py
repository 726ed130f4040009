"""Hash n-gram embedding ids of the local encoder (BLT §3.2.1, eq. 3–4).

For every byte position i and n-gram size n, the window of n ids ending at i (oldest first, the
sequence left-padded with BOE = 0) is hashed with a rolling polynomial hash
``Σ_j window[j] · prime^j`` in int64 with silent wrap-around (as the released weights expect),
then reduced modulo the table size. All (function, n) tables live in one fused embedding; table t
owns rows [t · vocab, (t + 1) · vocab).
"""
from __future__ import annotations

import torch

# The official primes; hash function f uses PRIMES[f].
PRIMES = (1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899, 9576890767,
          3628273133, 2860486313, 5463458053, 3367900313)


def _prime_powers(prime: int, n: int, device: torch.device) -> torch.Tensor:
    """[prime^0, …, prime^(n−1)] in int64 with wrap-around."""
    out = torch.ones(n, dtype=torch.int64, device=device)
    p = torch.tensor(prime, dtype=torch.int64, device=device)
    for j in range(1, n):
        out[j] = out[j - 1] * p
    return out


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
