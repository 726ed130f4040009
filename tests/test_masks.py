"""model/masks.py: the two named decoder masks equal the masks the layouts build (the BLT-D training
layouts of model/diffusion.py; cached BLT-D block passes, whose logits test_diffusion_generation
compares with the uncached inference layout)."""
from __future__ import annotations

import pytest
import torch

from fastblt.config import MASK_ID
from fastblt.generation.state import BLTState
from fastblt.model.diffusion import aligned_blocks, training_blocks, training_masks
from fastblt.model.layers import causal_window_mask
from fastblt.model.masks import block_self_mask, latent_cross_mask
from fastblt.patching import patches as P

from helpers import random_ids, tiny_model


def _layout_rows(starts, layout):
    """Positions, block ids (−1 clean, −2 invalid slot), block starts and latents of [clean ; slots]."""
    b, n = starts.shape[0], starts.shape[1] - 1
    clean_pos = torch.arange(n).expand(b, n)
    slot_block = torch.where(layout.slot_valid, layout.slot_block, -2)
    pos = torch.cat([clean_pos, layout.slot_positions], 1)
    block = torch.cat([torch.full((b, n), -1), slot_block], 1)
    start = torch.cat([torch.zeros(b, n, dtype=torch.long), layout.start.repeat_interleave(layout.size, 1)], 1)
    slot_lat = torch.where(layout.slot_valid, layout.latent.repeat_interleave(layout.size, 1), -1)
    return pos, block, start, torch.cat([P.decoder_patch_ids(starts), slot_lat], 1)


@pytest.mark.parametrize("window,b", [(None, 4), (5, 8), (64, 16)])
def test_masks_equal_the_training_layout(window, b):
    ids, m = random_ids(60, batch=3, seed=b), tiny_model()
    starts = P.compute_starts(m.cfg.patching, ids, m.entropies(ids))
    gens = [torch.Generator().manual_seed(r) for r in range(3)]
    for layout in (training_blocks(starts, b), aligned_blocks(starts, b, 6, 0.5, gens)):
        n_lat = int(P.num_patches(starts).max())
        self_mask, cross_mask = training_masks(starts, layout, n_lat, 2, window)
        pos, block, start, lat = _layout_rows(starts, layout)
        assert torch.equal(block_self_mask(pos, block, start, pos, block, window), self_mask)
        assert torch.equal(latent_cross_mask(lat, n_lat, 2), cross_mask)


def test_block_self_mask_parts():
    # 3 clean rows (positions 0..2), then one block of 2 slots at positions 3..4 starting at s = 3
    pos = torch.tensor([[0, 1, 2, 3, 4]])
    block = torch.tensor([[-1, -1, -1, 0, 0]])
    start = torch.full_like(pos, 3)
    m = block_self_mask(pos, block, start, pos, block, None)[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0],   # clean causal rows, never a slot
                 [1, 1, 0, 0, 0],
                 [1, 1, 1, 0, 0],
                 [1, 1, 1, 1, 1],   # slots: the clean prefix < s, and their own block both ways
                 [1, 1, 1, 1, 1]]
    # the slot → clean prefix part stops at the block start (no label leak) and respects the window
    start = torch.full_like(pos, 2)
    m = block_self_mask(pos, block, start, pos, block, 3)[0, 0].int().tolist()
    assert m[3] == [0, 1, 0, 1, 1] and m[4] == [0, 0, 0, 1, 1] and m[2] == [1, 1, 1, 0, 0]


def test_cached_block_pass_uses_the_same_masks():
    """decode_block's rows [clean n_dec..N−1 ; slots] against the full-sequence masks."""
    m = tiny_model(diffusion_block_size=4)
    state = BLTState(m)
    ids = random_ids(30)[0].tolist()
    state.append(ids)
    state.patch()
    state.encode()
    kv = state.close_patches(provisional=True)
    seen = {}
    real = m.local_decoder.forward

    def spy(h, positions, self_mask, kv_, cross_mask, caches=None, packed=None):
        seen.update(q_pos=positions, self_mask=self_mask)
        return real(h, positions, self_mask, kv_, cross_mask, caches, packed)

    m.local_decoder.forward = spy
    with torch.no_grad():
        state.decode_block([MASK_ID] * 4, kv)
    n = len(ids)
    full = causal_window_mask(seen["q_pos"], torch.arange(n + 4)[None], m.cfg.decoder.window)
    full[..., n:, n:] = True  # slots: bidirectional block (and causal within the window over the prefix)
    assert torch.equal(seen["self_mask"], full)
