"""`fastblt bench` and `fastblt demo` end to end on a tiny BLT-D model (seconds, not minutes)."""
import json

import pytest

import fastblt
from fastblt.cli import main

from helpers import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    fastblt.save(tiny_model(diffusion_block_size=4), d)
    return d


def test_bench_writes_json_table_and_plot(model_dir, tmp_path):
    rc = main(["bench", "--model", str(model_dir), "--tasks", "code,translation_fr", "--limit", "1",
               "--max-new-bytes", "24", "--quick", "--compare-hf", "0", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    rows = doc["results"]["code"]
    assert {"BLT", "BLT uncached", "BLT-S k=8", "BLT-D-4 conf α=0.7", "BLT-DV-4 1-step"} <= set(rows)
    assert rows["BLT"]["est_bandwidth_gb_decrease_pct"] == 0
    assert rows["BLT"]["decoder_nfe"] == 24  # fixed-length mode: one decoder call per byte
    # greedy lossless methods score exactly like BLT
    for lossless in ("BLT uncached", "BLT-S k=8", "BLT-DV-4 1-step"):
        assert rows[lossless]["scores"]["chrf"] == rows["BLT"]["scores"]["chrf"]
        assert rows[lossless]["mismatch_vs_blt"] == 0.0  # float32: the same outputs, sample by sample
    assert "mismatch_vs_blt" not in rows["BLT-D-4 conf α=0.7"] and doc["dtype"] == "float32"
    assert rows["BLT-S k=8"]["global_nfe"] < rows["BLT"]["global_nfe"] or rows["BLT"]["global_nfe"] <= 4
    assert "### code" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert doc["versions"]["torch"]


def test_bench_rejects_bad_flags(model_dir, tmp_path, capsys):
    assert main(["bench", "--model", str(model_dir), "--tasks", "nope", "--out", str(tmp_path)]) == 1
    assert "unknown task" in capsys.readouterr().err
    assert main(["bench", "--model", str(model_dir), "--limit", "-1", "--out", str(tmp_path)]) == 1
    assert "--limit" in capsys.readouterr().err


def test_demo_runs_all_four_systems(model_dir, capsys):
    rc = main(["demo", "--model", str(model_dir), "--max-new-bytes", "16", "--humaneval", "1", "--translation", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    for name in ("BLT", "BLT-S k=8", "BLT-D-4", "BLT-DV-4"):
        assert name in out
    assert "DIFFERS" not in out  # greedy BLT-S and BLT-DV reproduce BLT


def test_demo_without_model_says_how_to_get_one(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "missing")]) == 1
    assert "--model" in capsys.readouterr().err


def test_bench_humaneval_runs_code_only_on_opt_in(model_dir, tmp_path, capsys, monkeypatch):
    """Generated code runs only with --allow-code-execution AND FASTBLT_ALLOW_CODE_EXECUTION=1."""
    argv = ["bench", "--model", str(model_dir), "--tasks", "humaneval", "--limit", "1", "--max-new-bytes", "8",
            "--methods", "BLT", "--compare-hf", "0", "--out", str(tmp_path), "--no-progress"]
    monkeypatch.delenv("FASTBLT_ALLOW_CODE_EXECUTION", raising=False)
    assert main(argv) == 0
    assert "--allow-code-execution" in capsys.readouterr().err
    doc = json.loads((tmp_path / "results.json").read_text())
    assert "pass@1" not in doc["results"]["humaneval"]["BLT"]["scores"] and doc["code_executed"] is False
    assert main(argv + ["--allow-code-execution"]) == 1  # the flag alone is not enough
    assert "FASTBLT_ALLOW_CODE_EXECUTION=1" in capsys.readouterr().err
    monkeypatch.setenv("FASTBLT_ALLOW_CODE_EXECUTION", "1")
    assert main(argv + ["--allow-code-execution"]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["results"]["humaneval"]["BLT"]["scores"]["pass@1"] == 0.0 and doc["code_executed"] is True
