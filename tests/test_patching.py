"""Patch ids and starts: pure functions, the paper's worked example, and the incremental property."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastblt.config import OFFSET, PatchingConfig
from fastblt.patching import patches as P


def test_worked_example_encoder_and_decoder_ids():
    # starts at bytes 0, 1, 4 and at the next byte 8 (blt-architecture.md §a.6)
    starts = torch.zeros(1, 9, dtype=torch.bool)
    starts[0, [0, 1, 4, 8]] = True
    assert P.encoder_patch_ids(starts).tolist() == [[0, 1, 1, 1, 2, 2, 2, 2]]
    assert P.decoder_patch_ids(starts).tolist() == [[0, 0, 0, 1, 1, 1, 1, 2]]
    assert P.patch_lengths(starts).tolist() == [[1, 3, 4, 0]]
    assert torch.equal(P.starts_from_lengths(P.patch_lengths(starts), 8), starts)


def test_entropy_rules():
    ent = torch.tensor([[9.0, 0.1, 3.0, 0.5, 0.2, 2.5]])
    g = P.entropy_starts(ent, PatchingConfig(threshold=1.0))
    # bytes 0 and 1 always start; byte j+1 starts when H_j > 1 (j >= 1): H_2 = 3, H_5 = 2.5
    assert g.nonzero()[:, 1].tolist() == [0, 1, 3, 6]
    m = P.entropy_starts(ent, PatchingConfig(rule="monotonic", monotonic_threshold=1.0))
    # H_j - H_{j-1} > 1: j = 2 (2.9), j = 5 (2.3)
    assert m.nonzero()[:, 1].tolist() == [0, 1, 3, 6]


def test_max_patch_length_splits_from_patch_start():
    starts = torch.zeros(1, 13, dtype=torch.bool)
    starts[0, [0, 1]] = True
    out = P.limit_patch_length(starts, 4)
    assert P.patch_lengths(out).tolist() == [[1, 4, 4, 3]]


def test_static_and_space():
    s = P.static_starts(1, 9, 4)
    assert s.nonzero()[:, 1].tolist() == [0, 1, 5, 9]
    ids = torch.tensor([[1] + [c + OFFSET for c in b"ab cd\nef"]])
    sp = P.space_starts(ids)
    # after ' ' (byte 3) byte 4 starts; after '\n' (byte 6) byte 7 starts
    assert sp.nonzero()[:, 1].tolist() == [0, 1, 4, 7]


@settings(max_examples=60, deadline=None)
@given(ent=st.lists(st.floats(0, 6), min_size=2, max_size=60), cut=st.integers(1, 59),
       mode=st.sampled_from(["entropy", "static", "space"]), rule=st.sampled_from(["global", "monotonic"]),
       max_len=st.sampled_from([None, 3, 8]), seed=st.integers(0, 1000))
def test_appending_bytes_never_changes_earlier_patches(ent, cut, mode, rule, max_len, seed):
    n = len(ent)
    cut = min(cut, n)
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.ones(1, 1, dtype=torch.long), torch.randint(4, 260, (1, n - 1), generator=g)], 1)
    ids[0, 1::3] = ord(" ") + OFFSET
    cfg = PatchingConfig(mode=mode, rule=rule, threshold=3.0, monotonic_threshold=0.5, max_patch_length=max_len, patch_size=3)
    e = torch.tensor([ent])
    full = P.compute_starts(cfg, ids, e)
    prefix = P.compute_starts(cfg, ids[:, :cut], e[:, :cut])
    # every column of the prefix (including its "next byte" column) agrees with the full sequence
    assert torch.equal(prefix[0], full[0, : cut + 1])
    # the incremental rule agrees column by column
    open_len = 0
    for j in range(n + 1):
        s = P.is_patch_start(cfg, float(e[0, j - 1]) if j >= 1 else None, float(e[0, j - 2]) if j >= 2 else None,
                             int(ids[0, j - 1]) if j >= 1 else 0, open_len, j)
        assert s == bool(full[0, j]), j
        open_len = 1 if s else open_len + 1
