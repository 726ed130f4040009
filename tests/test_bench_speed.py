"""scripts/bench_speed.py: the report's overhead-sweep table says what its numbers say, the sweep
worker adds its cost before every component call, and bad flags stop before anything runs."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_model

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_speed.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_overhead_table_gives_each_method_its_ratio_and_the_call_count_limit():
    bs = _module()
    row = lambda v: {"bytes_per_second": v, "cpu_bytes_per_second": v, "stats": {}}  # noqa: E731
    doc = {"command": "c", "model": "m", "bytes": 512, "reps": 3, "new_commit": "a", "baseline_commit": "b",
           "new": {"BLT": row(800.0), "BLT-S k=8": row(1000.0)},
           "baseline": {"BLT": row(250.0), "BLT-S k=8": row(330.0)},
           "overhead": {"reps": 3, "component_calls": {"BLT": 1200, "BLT-S k=8": 900},
                        "bytes_per_second": {"0.0": {"BLT": 800.0, "BLT-S k=8": 1000.0},
                                             "800.0": {"BLT": 250.0, "BLT-S k=8": 325.0}}}}
    md = bs.report(doc)
    assert "| 0 µs | 800 | 1.25x |" in md
    assert "| 800 µs | 250 | 1.30x |" in md
    assert "| (call-count limit) | – | 1.33x |" in md
    assert "BLT-S k=8 1.32x" in md  # the baseline's own ratio, for comparison


def test_overhead_worker_spins_before_each_component_call(monkeypatch, tmp_path):
    """A cost added per component call shows in wall-clock: with 3 ms per call, 16 bytes of BLT take
    at least 3 ms × its component calls (a lower bound, not a timing target)."""
    import torch

    from fastblt.checkpoint import save

    bs = _module()
    model = tiny_model(seed=3)
    save(model, tmp_path / "m")
    monkeypatch.setattr(bs, "_methods", lambda m: [("BLT", "blt", {})])
    torch.manual_seed(0)
    out = bs.worker_overhead(str(tmp_path / "m"), 16, {"overhead_us": [0.0, 3000.0], "reps": 1})
    calls = out["component_calls"]["BLT"]
    assert calls >= 16 * 3  # encoder, decoder and entropy model per byte, plus global calls
    slow = out["bytes_per_second"]["3000.0"]["BLT"]
    assert 16 / slow >= 3e-3 * calls
    assert out["bytes_per_second"]["0.0"]["BLT"] > slow


@pytest.mark.parametrize("flags, message", [
    (["--overhead-us", "abc"], "--overhead-us takes"),
    (["--overhead-us", "nan"], "--overhead-us takes"),
    (["--overhead-us", "-5"], "--overhead-us takes"),
    (["--reps", "0"], "--reps must be >= 1"),
    (["--bytes", "-3"], "--bytes must be >= 1"),
    ([], "--baseline must be the root"),
])
def test_bad_flags_stop_before_anything_runs(flags, message, tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "s.md")] + flags,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and message in p.stderr
    assert not (tmp_path / "s.md").exists()
