"""The shipped default model against issue 9's targets, from the bench's own output.

    python scripts/targets_report.py                   # reads docs/bench_bltd_heldout/results.json
    python scripts/targets_report.py --out docs/targets.md

Rows come from ``fastblt bench --tasks code,prose --max-new-bytes 512`` on the shipped default
(fixed-length greedy generations, 3B-priced bandwidth as run, i.e. the fused schedule's E+G calls),
and held-out next-byte bits per byte from the model's config (written by the export).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pick(rows: dict, prefix: str) -> tuple[str, dict]:
    for name, r in rows.items():
        if name.startswith(prefix):
            return name, r
    raise KeyError(f"no row starting with {prefix!r} in {list(rows)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="docs/bench_bltd_heldout/results.json")
    p.add_argument("--model", default="fastblt/assets/default_model")
    p.add_argument("--dv", default="BLT-DV-8 1-step", help="row of BLT-DV with default options")
    p.add_argument("--dv-block", default="BLT-DV-8 1-step whole block",
                   help="row of BLT-DV drafting whole blocks (draft_cutoff 0): the acceptance target's row")
    p.add_argument("--d", default="BLT-D-8 conf α=0.7", help="row of BLT-D with default options")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    res = json.loads((ROOT / a.results).read_text())["results"]
    train = json.loads((ROOT / a.model / "config.json").read_text()).get("training", {})
    ok = lambda c: "met" if c else "**missed**"  # noqa: E731
    lines = ["| target | code | prose |", "|---|---|---|"]
    bpb = {t: train.get(f"{t}_test_bpb") for t in ("code", "prose")}
    lines.append(f"| next-byte held-out bpb ≤ 2.2 (code) / ≤ 2.6 (prose) | {bpb['code']:.3f} ({ok(bpb['code'] <= 2.2)}) | "
                 f"{bpb['prose']:.3f} ({ok(bpb['prose'] <= 2.6)}) |")
    cells = {k: [] for k in ("eq", "acc", "bw", "speed", "dbw", "chrf", "bpe")}
    for task in ("code", "prose"):
        rows = res[task]
        blt = rows["BLT"]
        _, dv = pick(rows, a.dv)
        _, dvb = pick(rows, a.dv_block)
        _, d = pick(rows, a.d)
        cells["eq"].append(f"chrF {dv['scores']['chrf']:.2f} vs {blt['scores']['chrf']:.2f} "
                           f"({ok(abs(dv['scores']['chrf'] - blt['scores']['chrf']) < 1e-9)}; bytes checked equal in the tests)")
        acc = dvb["acceptance_rate"]  # of whole blocks: the block head's quality, as the paper measures it
        cells["acc"].append(f"{100 * acc:.1f}% ({ok(acc >= 0.5) if task == 'code' else 'no target'}; "
                            f"{100 * dv['acceptance_rate']:.1f}% of the drafts cut at draft_cutoff)")
        cells["bw"].append(f"{dv['est_bandwidth_gb_3b']:.0f} vs {blt['est_bandwidth_gb_3b']:.0f} GB "
                           f"({ok(dv['est_bandwidth_gb_3b'] < blt['est_bandwidth_gb_3b'])})")
        cells["speed"].append(f"{dv['speed_vs_blt']:.2f}× BLT ({ok(dv['speed_vs_blt'] > 1)})")
        cut = d["est_bandwidth_gb_3b_decrease_pct"]
        cells["dbw"].append(f"{cut:.0f}% less ({ok(cut >= 40)})")
        ratio = d["scores"]["chrf"] / max(1e-9, blt["scores"]["chrf"])
        cells["chrf"].append(f"{d['scores']['chrf']:.2f} vs {blt['scores']['chrf']:.2f} = {ratio:.2f}× ({ok(ratio >= 0.8)})")
        cells["bpe"].append(f"BLT {blt['new_bytes'] / blt['global_nfe']:.1f}, BLT-DV {dv['new_bytes'] / dv['global_nfe']:.1f}")
    names = {"eq": f"{a.dv}: greedy output == BLT", "acc": f"{a.dv_block}: acceptance ≥ 50% (code)",
             "bw": f"{a.dv}: 3B-priced bandwidth (as run) below BLT's", "speed": f"{a.dv}: wall-clock below BLT's",
             "dbw": f"{a.d}: ≥ 40% less 3B-priced bandwidth than BLT", "chrf": f"{a.d}: chrF ≥ 0.8× BLT's",
             "bpe": "bytes per E+G call (context)"}
    for k, name in names.items():
        lines.append(f"| {name} | {cells[k][0]} | {cells[k][1]} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        (ROOT / a.out).write_text("# The shipped default against its targets\n\n`python scripts/targets_report.py` "
                                  f"over `{a.results}`.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
