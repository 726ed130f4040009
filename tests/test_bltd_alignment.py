"""Aligned BLT-D training: blocks that start inside a patch read the latent each schedule reads.

- span pooling equals the encoder's patch pooling on the same spans;
- every aligned block gives the same slot logits in the training layout (one pass, provisional
  latents as extra global rows) as in the inference layout on its own prefix (no label leak, and
  the provisional latent is the one generation computes);
- the fused latent is the one fused BLT-DV's state holds after a verifying pass;
- loss configuration, normalisation and warm-start errors.
"""
from __future__ import annotations

import argparse

import pytest
import torch

from fastblt import checkpoint
from fastblt.config import MASK_ID
from fastblt.generation.state import BLTState
from fastblt.model.diffusion import aligned_blocks, block_logits_inference, block_targets, forward_training_layout
from fastblt.patching import patches as P
from fastblt.training import train as T
from fastblt.training.objectives import (
    BLTDLoss,
    bltd_layout,
    bltd_loss,
    mask_denominator_of,
    row_generator,
    slot_accuracy_report,
)

from helpers import random_ids, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(diffusion_block_size=4, seed=3).float()


def test_pool_spans_equals_pool(model):
    ids = random_ids(40, batch=2, seed=5)
    b, n = ids.shape
    starts = model.patch_starts(ids)
    h = model.local_encoder(model.embed(ids), torch.arange(n).expand(b, n))
    n_p = int(P.num_patches(starts).max())
    ref = model.local_encoder.pool(h, P.encoder_patch_ids(starts), n_p)
    for r in range(b):
        idx = starts[r, :n].nonzero().flatten().tolist()
        lo, hi = torch.tensor([idx]), torch.tensor([idx[1:] + [n]])
        got = model.local_encoder.pool_spans(h[r:r + 1], lo, hi)
        assert (got - ref[r:r + 1, : len(idx)]).abs().max() < 1e-5
    # overlapping spans are fine too: a prefix of patch 1 pooled on its own
    cut = model.local_encoder.pool_spans(h[:1], torch.tensor([[idx[1]]]), torch.tensor([[idx[1] + 1]]))
    one = model.local_encoder.pool(h[:1, : idx[1] + 1], P.encoder_patch_ids(starts[:1, : idx[1] + 2]), 2)
    assert (cut[0, 0] - one[0, 1]).abs().max() < 1e-5


@pytest.mark.parametrize("fused_frac", [0.0, 1.0, 0.5])
def test_aligned_training_layout_equals_inference_layout(model, fused_frac):
    rows = random_ids(60, batch=2, seed=11)
    ids = rows[:, :-1]
    starts = model.patch_starts(ids)
    lay = aligned_blocks(starts, 4, 12, fused_frac, [row_generator(0, 0, r, 3) for r in range(2)])
    assert lay.provisional.any() or fused_frac == 1.0  # mid-patch starts with a provisional latent occur
    assert (~starts.gather(1, lay.start)).any()  # and the blocks do start inside patches
    targets = block_targets(rows, lay)
    slots = torch.where(torch.rand(targets.shape, generator=torch.Generator().manual_seed(1)) < 0.6,
                        torch.full_like(targets, MASK_ID), targets)
    _, slot_logits = forward_training_layout(model, ids, starts, slots, lay)
    for r in range(2):
        for q in range(lay.start.shape[1]):
            m = int(lay.start[r, q])
            kind = "fused" if bool(lay.fused[r, q]) else "provisional"
            ref = block_logits_inference(model, ids[r:r + 1, :m], slots[r:r + 1, q * 4:(q + 1) * 4], latent=kind)
            assert (slot_logits[r, q * 4:(q + 1) * 4] - ref[0]).abs().max() < 1e-4, (r, q, m, kind)


def test_provisional_and_fused_latents_are_what_generation_reads(model):
    ids = random_ids(50, seed=2)[0].tolist()
    starts = model.patch_starts(torch.tensor([ids]))
    enc = P.encoder_patch_ids(starts)[0]
    with torch.no_grad():
        for m in range(3, 50):
            # fused BLT-DV: a verifying pass over ids[:m-1] (all four components), then the pending byte
            st = BLTState(model)
            st.extend(ids[: m - 1])
            st.append([ids[m - 1]])
            st.encode()
            fused_kv = st.last_latent_vectors()
            h, latents = model.encode(torch.tensor([ids[:m]]), model.patch_starts(torch.tensor([ids[:m]])))
            want = model.local_decoder.latent_vectors(latents)[:, (int(enc[m - 1]) - 1) * 2:(int(enc[m - 1])) * 2]
            assert (fused_kv - want).abs().max() < 1e-5, m
            # BLT-D / paper schedule: the provisional latent of the prefix ids[:m]
            st2 = BLTState(model)
            st2.append(ids[:m])
            st2.patch()
            st2.encode()
            prov_kv = st2.close_patches(provisional=True)
            assert (prov_kv - model.local_decoder.latent_vectors(latents)[:, -2:]).abs().max() < 1e-5, m


def test_slot_accuracy_report_layouts_agree(model):
    rows = random_ids(64, batch=2, seed=4)
    rep = slot_accuracy_report(model, rows, 4, n_blocks=8)
    for kind in ("provisional", "fused"):
        for where in ("boundary", "mid"):
            r = rep[kind][where]
            assert r["training"] == pytest.approx(r["inference"], abs=1e-6)
            assert len(r["greedy"]) == 4
    assert rep["provisional"]["mid"]["blocks"] > 0


def test_bltd_loss_modes_and_normalisation(model):
    rows = random_ids(48, batch=3, seed=8)
    for cfg in (BLTDLoss(4), BLTDLoss(4, blocks="patch"), BLTDLoss(4, mask_norm="mean"), BLTDLoss(4, distill=0.5)):
        loss, st = bltd_loss(model, rows, cfg, 0, 1, [0, 1, 2])
        assert torch.isfinite(loss) and float(st["mask"]) > 0
    # "sum" divides by b·N; "mean" by the valid slots
    assert float(mask_denominator_of(model, rows, BLTDLoss(4))) == 3 * 48
    n_mean = float(mask_denominator_of(model, rows, BLTDLoss(4, mask_norm="mean"), 0, 1, [0, 1, 2]))
    assert 0 < n_mean <= 3 * (48 // 16) * 4
    # per-row noise: a row's blocks do not depend on the other rows of the batch (DDP splits)
    ids = rows[:, :-1]
    starts = model.patch_starts(ids)
    one = bltd_layout(model, ids[1:2], starts[1:2], BLTDLoss(4), 0, 5, [1])
    all_ = bltd_layout(model, ids, starts, BLTDLoss(4), 0, 5, [0, 1, 2])
    assert torch.equal(one.start[0], all_.start[1]) and torch.equal(one.fused[0], all_.fused[1])


@pytest.mark.parametrize("bad", [dict(blocks="random"), dict(mask_norm="avg"), dict(block_stride=0),
                                 dict(fused_frac=1.5), dict(distill=-0.1)])
def test_bltd_loss_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        BLTDLoss(4, **bad)


def _args(out, **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    T.add_arguments(p)
    argv = ["--out", str(out), "--preset", "tiny"]
    for k, v in kw.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    return p.parse_args(argv)


def test_warm_start_copies_weights_and_refuses_mismatches(tmp_path):
    src = tiny_model(seed=1)  # a plain BLT (no MASK rows)
    checkpoint.save(src, tmp_path / "blt")
    m = T.build_model(_args(tmp_path / "run", objective="bltd", block_size=4, init_from=tmp_path / "blt"))
    assert m.cfg.diffusion_block_size == 4 and m.cfg.patching == src.cfg.patching
    sd, own = src.state_dict(), m.state_dict()
    for k, v in sd.items():
        assert torch.equal(own[k][: v.shape[0]], v), k
    # a BLT-D trained for another B
    checkpoint.save(tiny_model(diffusion_block_size=8, seed=1), tmp_path / "bltd8")
    with pytest.raises(ValueError, match="B = 8.*B = 4"):
        T.build_model(_args(tmp_path / "run", objective="bltd", block_size=4, init_from=tmp_path / "bltd8"))
    # another shape
    with pytest.raises(ValueError, match="another shape"):
        T.build_model(_args(tmp_path / "run", objective="bltd", block_size=4, init_from=tmp_path / "blt",
                            preset="small"))


def test_self_data_rows_are_greedy_continuations_and_train(tmp_path):
    import numpy as np

    import fastblt
    from fastblt.training import self_data

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = [b"def add(a, b):\n    return a + b\n" * 3, b"the cat sat on the mat. " * 4]
    for split in ("train", "val"):
        (corpus / f"{split}.bin").write_bytes(b"".join(docs))
        np.save(corpus / f"{split}.idx.npy", np.cumsum([0] + [len(d) for d in docs]).astype(np.int64))
    model = tiny_model(diffusion_block_size=4, seed=2)
    checkpoint.save(model, tmp_path / "m")
    assert self_data.main(["--model", str(tmp_path / "m"), "--out", str(tmp_path / "self"), "--data", str(corpus),
                           "--prompt-bytes", "16", "--new-bytes", "31", "--max-rows", "3", "--chunk", "2"]) == 0
    rows, prompt_len = self_data.load_self_rows(tmp_path / "self", 47)
    assert rows.shape == (3, 48) and prompt_len == 17
    for r in rows:
        prompt = bytes(int(i) - 4 for i in r[1:prompt_len])
        assert any(prompt in d for d in docs)
        want = fastblt.generate(fastblt.load(tmp_path / "m"), prompt, max_new_bytes=31, ignore_eos=True).bytes
        assert bytes(int(i) - 4 for i in r[prompt_len:]) == want
    with pytest.raises(ValueError, match="--seq-len 63 needs 64"):
        self_data.load_self_rows(tmp_path / "self", 63)
    # a training run mixes them in; the generated part is not scored by L_clean
    args = _args(tmp_path / "run", objective="bltd", block_size=4, init_from=tmp_path / "m", data=corpus,
                 self_data=tmp_path / "self", self_rows=1, batch_size=2, seq_len=47, steps=2, eval_every=0,
                 save_every=0, threads=1)
    args.no_progress = args.no_plot = True
    assert T.run(args) == 0
    with pytest.raises(ValueError, match="--self-rows"):
        bad = _args(tmp_path / "run2", objective="bltd", block_size=4, init_from=tmp_path / "m", data=corpus,
                    self_data=tmp_path / "self", self_rows=0)
        T.run(bad)


def test_resume_refuses_other_alignment_flags(tmp_path):
    import numpy as np

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    doc = b"x = 1\nprint(x)\n" * 20
    for split in ("train", "val"):
        (corpus / f"{split}.bin").write_bytes(doc)
        np.save(corpus / f"{split}.idx.npy", np.array([0, len(doc)], dtype=np.int64))
    checkpoint.save(tiny_model(seed=1), tmp_path / "blt")
    base = dict(objective="bltd", block_size=4, init_from=tmp_path / "blt", data=corpus, batch_size=2, seq_len=32,
                steps=4, stop_after_steps=2, eval_every=0, save_every=2, threads=1)

    def run(**kw):
        a = _args(tmp_path / "run", **{**base, **kw})
        a.no_progress = a.no_plot = True
        return T.run(a)

    assert run() == 0
    for flag, value in (("distill", 0.5), ("blocks", "patch"), ("mask_norm", "mean"), ("fused_frac", 0.2)):
        with pytest.raises(ValueError, match="differs"):
            a = _args(tmp_path / "run", **{**base, flag: value})
            a.no_progress = a.no_plot = True
            a.resume = True
            T.run(a)
