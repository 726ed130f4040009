"""BLT-D slot accuracy by block start (patch boundary / inside a patch) and latent (provisional /
fused), in the training and the inference layout, for one or more models.

    python scripts/slot_accuracy.py --model fastblt/assets/default_model --json docs/slot_accuracy_after.json
    python scripts/slot_accuracy.py --render before=docs/slot_accuracy_before.json \
        after=docs/slot_accuracy_after.json --out docs/slot_accuracy.md

Every slot is masked (one-step drafting); 8 val rows × 16 block starts drawn as in aligned training
(:func:`fastblt.training.objectives.slot_accuracy_report`). "training" must equal "inference"
(the label-leak check); "= greedy" is the share of slots whose argmax equals the model's own
next-byte argmax at the same position under teacher forcing (for slot 1 exactly what BLT-DV's
verifier compares against); "AR" is the next-byte accuracy of the clean row predicting slot 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def measure(model_dir: str, rows: int) -> dict:
    import fastblt
    from fastblt.training.objectives import slot_accuracy_report
    from fastblt.training.train import VAL_SEED, open_split

    model = fastblt.load(model_dir).float().eval()
    batch = open_split("data_cache/corpus", "val").sample_batch(0, rows, 512, seed=VAL_SEED)
    return slot_accuracy_report(model, batch, model.cfg.diffusion_block_size, n_blocks=16)


def render(named: list[tuple[str, dict]]) -> str:
    lines = ["| model | latent | block start | blocks | AR (slot-1 byte) | slot 1 | slots 1..B (training layout) | "
             "inference layout = training | slot 1 = greedy | mean slot = greedy |", "|" + "---|" * 10]
    for name, rep in named:
        for kind, by in rep.items():
            for where, r in by.items():
                tr, inf = r["training"], r.get("inference", r["training"])
                same = "yes" if max(abs(a - b) for a, b in zip(tr, inf)) < 1e-6 else "NO"
                lines.append(f"| {name} | {kind} | {where} | {r['blocks']} | {r['ar']:.2f} | {tr[0]:.2f} | "
                             f"{' '.join(f'{x:.2f}' for x in tr)} | {same} | {r['greedy'][0]:.2f} | "
                             f"{sum(r['greedy']) / len(r['greedy']):.2f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder to measure")
    p.add_argument("--json", help="write the measurement here")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--render", nargs="*", default=[], help="NAME=JSON pairs to tabulate")
    p.add_argument("--out", help="markdown file for --render")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.model:
        rep = measure(a.model, a.rows)
        text = json.dumps(rep, indent=1)
        if a.json:
            Path(a.json).write_text(text)
        print(render([(a.model, rep)]))
    if a.render:
        named = [(x.split("=", 1)[0], json.loads(Path(x.split("=", 1)[1]).read_text())) for x in a.render]
        table = render(named)
        if a.out:
            Path(a.out).write_text("# BLT-D slot accuracy by block start and latent\n\n" + __doc__.split("\n\n", 2)[2]
                                   + "\n" + table + "\n")
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
