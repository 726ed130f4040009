"""Golden values of the shipped models: the first greedy bytes and a small logit slice, pinned in
tests/golden/shipped_models.json (written by ``python scripts/make_golden.py``).

The relative contracts (BLT-S == BLT, cached == uncached) hold even if every path drifts the same
way; this test catches that. When the shipped weights change on purpose, regenerate the file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import fastblt
from fastblt.checkpoint import DEFAULT_MODEL
from fastblt.config import byte_ids

GOLDEN = json.loads((Path(__file__).parent / "golden" / "shipped_models.json").read_text())
REGENERATE = f"the shipped weights changed: regenerate the golden file with `{GOLDEN['regenerate']}`"


@pytest.mark.parametrize("name", sorted(GOLDEN["models"]))
def test_shipped_model_matches_golden(name):
    want = GOLDEN["models"][name]
    folder = DEFAULT_MODEL.parent / name
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert sha == want["weights_sha256"], REGENERATE
    model = fastblt.load(folder)
    prompt = bytes.fromhex(GOLDEN["prompt_hex"])
    with torch.no_grad():
        last = model(torch.tensor([byte_ids(prompt)]))[0, -1]
    for key in ("logits_last_position", "top4_last_position"):
        got = last[want[key]["ids"]]
        assert torch.allclose(got, torch.tensor(want[key]["values"]), atol=1e-4, rtol=0), (key, got.tolist())
    r = fastblt.generate(model, prompt, method=GOLDEN["method"], max_new_bytes=GOLDEN["new_bytes"],
                         ignore_eos=GOLDEN["ignore_eos"])
    assert r.bytes.hex() == want["greedy_hex"]
