"""Tests for fastblt.evaluation.tasks with fake generators (no model needed)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from fastblt.evaluation import tasks
from fastblt.evaluation.tasks import (
    HUMANEVAL_STOPS,
    aggregate_stats,
    load_humaneval,
    run_continuation,
    run_humaneval,
    run_translation,
    translation_prompt,
    truncate_at_stops,
)


@dataclass
class Out:
    bytes: bytes
    stats: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """A fake generator: looks up the continuation by prompt and records every call."""

    def __init__(self, table: dict[bytes, bytes], default: bytes = b"", honour_stops: bool = True):
        self.table, self.default, self.honour_stops = table, default, honour_stops
        self.calls: list[tuple[bytes, int, list[bytes]]] = []

    def __call__(self, prompt: bytes, max_new: int, stops: list[bytes]) -> Out:
        self.calls.append((prompt, max_new, list(stops)))
        text = self.table.get(prompt, self.default)
        if self.honour_stops:
            text = truncate_at_stops(text, stops)
        return Out(text, {"decoder_nfe": len(text), "global_nfe": 2, "drafted_bytes": 10, "accepted_bytes": 5})


# ---------------------------------------------------------------------------------------------
# stops / aggregation


@pytest.mark.parametrize(
    "text, stops, expected",
    [
        (b"    return 1\n\ndef f():\n", HUMANEVAL_STOPS, b"    return 1\n"),
        (b"    return 1\n# comment\nclass A: pass", HUMANEVAL_STOPS, b"    return 1"),
        (b"    if x:\n        return 1\n", HUMANEVAL_STOPS, b"    if x:\n        return 1\n"),  # indented: no stop
        (b"    return 1\nif __name__ == '__main__':", HUMANEVAL_STOPS, b"    return 1"),
        (b" Hello.\nFrench: x", [b"\n"], b" Hello."),
        (b"no stop here", [b"\n", ""], b"no stop here"),
        (b"abcXYdefX", ["Y", "X"], b"abc"),  # earliest match wins, str stops accepted
        (b"", [b"\n"], b""),
    ],
)
def test_truncate_at_stops(text: bytes, stops: list, expected: bytes) -> None:
    assert truncate_at_stops(text, stops) == expected


def test_aggregate_stats_acceptance_from_sums() -> None:
    agg = aggregate_stats(
        [
            {"decoder_nfe": 10, "drafted_bytes": 10, "accepted_bytes": 9, "name": "x"},
            {"decoder_nfe": 20, "drafted_bytes": 30, "accepted_bytes": 3},
        ]
    )
    assert agg["decoder_nfe"] == 15.0
    assert agg["drafted_bytes_sum"] == 40 and agg["accepted_bytes_sum"] == 12
    assert agg["acceptance_rate"] == pytest.approx(12 / 40)  # not the mean of 0.9 and 0.1
    assert "name" not in agg
    assert "acceptance_rate" not in aggregate_stats([{"decoder_nfe": 1, "drafted_bytes": 0}])
    assert aggregate_stats([]) == {}


# ---------------------------------------------------------------------------------------------
# HumanEval


@pytest.fixture(scope="module")
def problems() -> list[dict[str, Any]]:
    return load_humaneval(limit=3)


def test_load_humaneval() -> None:
    assert len(load_humaneval(None)) == 164
    p = load_humaneval(2)
    assert [x["task_id"] for x in p] == ["HumanEval/0", "HumanEval/1"]


@pytest.fixture
def allow_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTBLT_ALLOW_CODE_EXECUTION", "1")


def test_humaneval_executes_nothing_by_default(problems: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTBLT_ALLOW_CODE_EXECUTION", "1")
    monkeypatch.setattr("fastblt.evaluation.execution.run_untrusted", lambda *a, **k: pytest.fail("executed"))
    gen = Recorder({}, default=b"    return None\n")
    res = run_humaneval(gen, problems, progress=False)
    assert "pass@1" not in res.scores and res.scores["parse_rate"] == 1.0
    monkeypatch.delenv("FASTBLT_ALLOW_CODE_EXECUTION")
    with pytest.raises(ValueError, match="FASTBLT_ALLOW_CODE_EXECUTION=1"):
        run_humaneval(gen, problems, progress=False, run_code=True)


def test_humaneval_canonical_passes(problems: list[dict[str, Any]], allow_exec: None) -> None:
    # the canonical solution followed by junk that the stop strings must remove
    gen = Recorder({p["prompt"].encode(): (p["canonical_solution"] + "\n\ndef junk(:\n").encode() for p in problems})
    res = run_humaneval(gen, problems, max_new_bytes=64, progress=False, run_code=True)
    assert res.n == 3
    assert res.scores["pass@1"] == 1.0
    assert res.scores["parse_rate"] == 1.0
    assert res.scores["chrf"] > 95.0
    assert all(c[2] == list(HUMANEVAL_STOPS) and c[1] == 64 for c in gen.calls)
    assert res.efficiency["global_nfe"] == 2.0
    assert res.efficiency["acceptance_rate"] == 0.5
    json.dumps(res.to_dict())


def test_humaneval_return_none_fails(problems: list[dict[str, Any]], allow_exec: None) -> None:
    gen = Recorder({}, default=b"    return None\n")
    res = run_humaneval(gen, problems, progress=False, run_code=True)
    assert res.scores["pass@1"] == 0.0
    assert res.scores["parse_rate"] == 1.0
    assert all(s.details["result"].startswith("failed") for s in res.samples)


def test_humaneval_fixed_length_passes_no_stops(problems: list[dict[str, Any]], allow_exec: None) -> None:
    p = problems[:1]
    completion = p[0]["canonical_solution"] + "\nprint(1)\n)))) syntax error"
    gen = Recorder({p[0]["prompt"].encode(): completion.encode()}, honour_stops=False)
    res = run_humaneval(gen, p, max_new_bytes=512, fixed_length=True, progress=False, run_code=True)
    assert gen.calls[0][2] == [] and gen.calls[0][1] == 512
    assert res.scores["pass@1"] == 1.0 and res.scores["parse_rate"] == 1.0
    assert res.samples[0].output == p[0]["canonical_solution"]
    assert res.samples[0].stats["generated_bytes"] == len(completion.encode())
    # without truncation the same text would not parse
    assert not tasks._parses(p[0]["prompt"] + completion)


# ---------------------------------------------------------------------------------------------
# translation

TEST = [
    {"id": f"t{i}", "src_lang": lang, "tgt_lang": "en", "src": f"{lang} source {i}", "tgt": tgt}
    for lang in ("fr", "de")
    for i, tgt in enumerate(
        ["The cat sits on the mat today.", "Click the button to open the dialog box.", "Save the file before closing it."]
    )
]
SHOTS = [
    {"id": f"s{lang}{i}", "src_lang": lang, "tgt_lang": "en", "src": f"{lang} shot {i}", "tgt": f"shot {i}"}
    for lang in ("de", "fr")
    for i in range(5)
]


def test_translation_prompt_format() -> None:
    shots = [{"src": "Bonjour", "tgt": "Hello"}, {"src": "Merci", "tgt": "Thanks"}]
    assert translation_prompt("fr", shots, "Oui") == "French: Bonjour\nEnglish: Hello\nFrench: Merci\nEnglish: Thanks\nFrench: Oui\nEnglish:"
    assert translation_prompt("de", [], "Ja") == "German: Ja\nEnglish:"


@pytest.mark.parametrize("lang", ["fr", "de"])
def test_translation_reference_gives_bleu_100(lang: str) -> None:
    shots = [s for s in SHOTS if s["src_lang"] == lang][:4]
    table = {translation_prompt(lang, shots, r["src"]).encode(): f" {r['tgt']}\nFrench: x".encode() for r in TEST if r["src_lang"] == lang}
    gen = Recorder(table)
    res = run_translation(gen, lang, test_records=TEST, shot_records=SHOTS, progress=False)
    assert res.task == f"translation_{lang}_en" and res.n == 3
    assert res.scores["bleu"] == pytest.approx(100.0)
    assert res.scores["chrf"] == pytest.approx(100.0)
    assert all(c[2] == [b"\n"] for c in gen.calls)
    assert res.config["shot_ids"] == [f"s{lang}{i}" for i in range(4)]
    assert gen.calls[0][0].count(b"English:") == 5


def test_translation_garbage_low_and_fixed_length() -> None:
    gen = Recorder({}, default=b" zzz qqq\nGerman: more", honour_stops=False)
    res = run_translation(gen, "de", limit=2, fixed_length=True, max_new_bytes=100, test_records=TEST, shot_records=SHOTS, progress=False)
    assert res.n == 2
    assert res.scores["bleu"] < 5 and res.scores["chrf"] < 20
    assert all(c[2] == [] and c[1] == 100 for c in gen.calls)
    assert [s.output for s in res.samples] == ["zzz qqq", "zzz qqq"]


def test_translation_uses_heldout_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "_load_heldout", lambda name: {"translation_test": TEST, "translation_shots": SHOTS}[name])
    res = run_translation(Recorder({}, default=b" x\n"), "fr", limit=1, progress=False)
    assert res.n == 1
    with pytest.raises(ValueError):
        run_translation(Recorder({}), "fr", n_shots=6, progress=False)
    with pytest.raises(ValueError):
        run_translation(Recorder({}), "es", progress=False)


# ---------------------------------------------------------------------------------------------
# continuation


def test_continuation_bpb_and_chrf() -> None:
    texts = ["a" * 300 + "b" * 300, "short text é", "x" * 100 + "y" * 500]
    records = [{"id": i, "text": t} for i, t in enumerate(texts)]
    seen: list[bytes] = []

    def nll(b: bytes) -> float:
        seen.append(b)
        return len(b) * math.log(2)

    def gen(prompt: bytes, n: int, stops: list[bytes]) -> Out:
        assert stops == [] and len(prompt) == 256 and n == 256
        full = next(t.encode() for t in texts if t.encode().startswith(prompt))
        return Out(full[256:] + b"extra" * 60, {"decoder_nfe": 256})  # longer than asked: cut to 256

    res = run_continuation(gen, nll, records, progress=False)
    assert res.scores["bpb"] == pytest.approx(1.0)
    assert res.scores["chrf"] == pytest.approx(100.0)
    assert len(seen) == 3 and seen[1] == "short text é".encode()
    assert res.config["n_generated"] == 2  # the short text has no continuation to score
    assert res.efficiency["decoder_nfe"] == 256
    assert res.samples[0].output == "a" * 44 + "b" * 212

    res2 = run_continuation(None, lambda b: 2 * len(b) * math.log(2), records, progress=False)
    assert res2.scores == {"bpb": pytest.approx(2.0)}
    json.dumps(res2.to_dict())
