"""``fastblt demo``, the main job: the four generation systems on real prompts with the shipped model.

Prompts: HumanEval problems (0-shot), FR→EN and DE→EN (4-shot, held-out LibreOffice help) and a
held-out Python file. Every system generates the same number of bytes (the paper's fixed-length
accounting); the text shown is cut at the task's stop strings. The table compares decoder NFEs,
encoder+global NFEs, acceptance, estimated bandwidth (this model, and priced with the paper's 3B
counts) and measured bytes/s against cached BLT, and checks the lossless contracts: greedy BLT-S
equals BLT, greedy BLT-DV equals the model's own autoregressive output.
"""
from __future__ import annotations

import argparse
import textwrap
import time
from pathlib import Path

from ..checkpoint import load
from . import tasks as T


def _prompts(n_he: int, n_tr: int) -> list[tuple[str, bytes, tuple[bytes, ...]]]:
    from ..data.heldout import load_heldout

    out = []
    for p in T.load_humaneval(n_he):
        out.append((p["task_id"], p["prompt"].encode(), T.HUMANEVAL_STOPS))
    shots = load_heldout("translation_shots")
    test = load_heldout("translation_test")
    for lang in ("fr", "de"):
        lang_shots = [r for r in shots if r["src_lang"] == lang][:4]
        for r in [r for r in test if r["src_lang"] == lang][:n_tr]:
            out.append((f"{lang}→en {r['id'][-14:]}", T.translation_prompt(lang, lang_shots, r["src"]).encode(),
                        T.TRANSLATION_STOPS))
    code = load_heldout("code_test")[0]
    out.append((f"code {code['id'][-28:]}", code["text"].encode()[:256], ()))
    return out


def run(args: argparse.Namespace) -> int:
    from ..generation.api import generate

    if not Path(args.model).exists():
        raise FileNotFoundError(f"no model at {args.model}; train one (scripts/train_default.sh) or pass --model DIR")
    if args.max_new_bytes < 1:
        raise ValueError("--max-new-bytes must be >= 1")
    model = load(args.model)
    b = model.cfg.diffusion_block_size
    systems = [("BLT", "blt", {}), ("BLT-S k=8", "blt-s", {"draft_length": 8})]
    if b:
        systems += [(f"BLT-D-{b} α=0.7", "blt-d", {"unmask": "confidence", "alpha": 0.7}),
                    (f"BLT-DV-{b} 1-step", "blt-dv", {"unmask": "one-step"})]
    else:
        print("this model has no diffusion training: BLT-D and BLT-DV are skipped (BLT-S still runs)")
    prompts = _prompts(args.humaneval, args.translation)
    totals = {name: {} for name, _, _ in systems}
    outputs: dict[str, dict[str, bytes]] = {name: {} for name, _, _ in systems}
    t_start = time.perf_counter()
    for pid, prompt, stops in prompts:
        print(f"\n=== {pid} ===")
        print(textwrap.indent(prompt.decode("utf-8", "replace")[-300:], "  │ "))
        for name, method, kw in systems:
            r = generate(model, prompt, method=method, max_new_bytes=args.max_new_bytes, ignore_eos=True, **kw)
            outputs[name][pid] = r.bytes
            for k, v in r.stats.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    totals[name][k] = totals[name].get(k, 0.0) + float(v)
            shown = T.truncate_at_stops(r.bytes, stops).decode("utf-8", "replace")
            print(f"  {name:<16} {shown[:200]!r}")
    n = len(prompts)
    base = totals["BLT"]
    print(f"\n{n} prompts × {args.max_new_bytes} bytes, greedy; means per prompt "
          f"(BW: estimated weight traffic, Fast BLT eq. 8)\n")
    head = f"{'system':<16} {'dec NFE':>8} {'E+G NFE':>8} {'accept':>7} {'BW MB':>8} {'BW GB@3B':>9} {'BW dec':>7} {'bytes/s':>8}  lossless"
    print(head)
    print("-" * len(head))
    for name, method, _ in systems:
        t = totals[name]
        acc = t.get("accepted_bytes", 0) / t["drafted_bytes"] if t.get("drafted_bytes") else None
        dec = 100 * (base["est_bandwidth_gb_3b"] - t["est_bandwidth_gb_3b"]) / base["est_bandwidth_gb_3b"]
        if method == "blt-s":
            check = "== BLT" if outputs[name] == outputs["BLT"] else "DIFFERS from BLT"
        elif method == "blt-dv":
            check = "== BLT (same weights)" if outputs[name] == outputs["BLT"] else "DIFFERS from BLT"
        else:
            check = ""
        print(f"{name:<16} {t['decoder_nfe'] / n:>8.1f} {t['global_nfe'] / n:>8.1f} "
              f"{'' if acc is None else f'{100 * acc:.0f}%':>7} {1000 * t['est_bandwidth_gb'] / n:>8.2f} "
              f"{t['est_bandwidth_gb_3b'] / n:>9.1f} {dec:>6.0f}% {t['new_bytes'] / t['seconds']:>8.0f}  {check}")
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")
    return 0
