"""Regenerate tests/golden/shipped_models.json: the shipped models' first greedy bytes and a small
logit slice, which tests/test_golden.py pins (catching silent numerical drift that the relative
contracts, e.g. BLT-S == BLT, cannot see).

Run it deliberately, and only when the shipped weights (fastblt/assets/) changed on purpose:

    python scripts/make_golden.py

It records each model's sha256 so that the test can tell "the weights changed: regenerate" from
"the same weights now compute something else: a real regression". Float32 on CPU, one thread.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "shipped_models.json"
MODELS = ("default_model", "blt_model")  # folders of fastblt/assets/
PROMPT = b"import os\nimport sys\n\ndef main("  # both shipped models continue it with varied bytes
NEW_BYTES = 32
LOGIT_IDS = (36, 52)  # logits of ids 36 .. 51 (bytes " " .. "/") at the last prompt position, and its top 4


def weights_sha256(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def measure(folder: Path) -> dict:
    """What the golden file records for one model folder."""
    import fastblt
    from fastblt.config import byte_ids

    model = fastblt.load(folder)
    ids = torch.tensor([byte_ids(PROMPT)])
    with torch.no_grad():
        last = model(ids)[0, -1]  # [260] float32
    lo, hi = LOGIT_IDS
    top = torch.topk(last, 4)
    r = fastblt.generate(model, PROMPT, method="blt", max_new_bytes=NEW_BYTES, ignore_eos=True)
    return {
        "weights_sha256": weights_sha256(folder),
        "greedy_hex": r.bytes.hex(),
        "logits_last_position": {"ids": list(range(lo, hi)), "values": [round(float(v), 6) for v in last[lo:hi]]},
        "top4_last_position": {"ids": top.indices.tolist(), "values": [round(float(v), 6) for v in top.values]},
    }


def main() -> int:
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))  # this checkout's fastblt, not another installed copy
    from fastblt.checkpoint import DEFAULT_MODEL

    assets = DEFAULT_MODEL.parent
    doc = {"prompt_hex": PROMPT.hex(), "new_bytes": NEW_BYTES, "method": "blt", "ignore_eos": True,
           "regenerate": "python scripts/make_golden.py",
           "models": {name: measure(assets / name) for name in MODELS if (assets / name / "config.json").is_file()}}
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {GOLDEN.relative_to(ROOT)}: {', '.join(doc['models'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
