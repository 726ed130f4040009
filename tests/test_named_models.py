"""Named models from the installed package, `fastblt models`, and save_hf output that transformers'
default generate() runs."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastblt
from fastblt.cli import main as cli
from fastblt.named_models import NAMED_MODELS, named_path

from helpers import tiny_model

PACKAGE = Path(fastblt.__file__).resolve().parent


def test_named_models_load():
    default, blt = fastblt.load(), fastblt.load("blt")
    assert fastblt.load("default").cfg == default.cfg
    assert default.cfg.diffusion_block_size is not None and blt.cfg.diffusion_block_size is None
    assert named_path("default") == PACKAGE / "assets" / "default_model"
    with pytest.raises(ValueError, match="unknown model name 'nope'"):
        named_path("nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastblt.load("nope")


def test_existing_path_wins_over_a_name(tmp_path, monkeypatch):
    fastblt.save(tiny_model(), tmp_path / "blt")
    monkeypatch.chdir(tmp_path)
    assert fastblt.load("blt").cfg.encoder.dim == tiny_model().cfg.encoder.dim != fastblt.load(named_path("blt")).cfg.encoder.dim


def test_installed_package_outside_the_source_tree(tmp_path):
    # The package (with its assets, as package data) copied to a site folder; run from an unrelated cwd.
    site, work = tmp_path / "site", tmp_path / "work"
    shutil.copytree(PACKAGE, site / "fastblt", ignore=shutil.ignore_patterns("__pycache__"))
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    code = ("import sys, json, fastblt; from fastblt.cli import main; "
            "a, b = fastblt.load(), fastblt.load('blt'); "
            "print(json.dumps([fastblt.__file__, a.cfg.diffusion_block_size, b.cfg.diffusion_block_size])); "
            "assert main(['models']) == 0; "
            "sys.exit(main(['generate', '--model', 'blt', '--method', 'blt-s', '--max-new-bytes', '8', '--json', 'def']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    file, block, blt_block = json.loads(lines[0])
    assert Path(file).resolve().is_relative_to(site.resolve())  # the copy, not the source tree
    assert block is not None and blt_block is None
    for name in NAMED_MODELS:
        assert any(line.startswith(name) for line in lines)
    assert str(site / "fastblt" / "assets") in out.stdout
    assert json.loads(lines[-1])["stats"]["new_bytes"] <= 8


def test_models_command_lists_names(capsys):
    assert cli(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == list(NAMED_MODELS)
    assert all(r["installed"] for r in rows)


def test_save_hf_runs_transformers_default_generate(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = tiny_model().cfg
    cfg = dataclasses.replace(cfg, double_residual=True, patching=dataclasses.replace(cfg.patching, max_patch_length=None))
    torch.manual_seed(0)
    model = fastblt.BLT(cfg).eval()
    fastblt.save_hf(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["use_cache"] is False
    hf = transformers.BltForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([fastblt.config.byte_ids(b"def add(a, b):")])
    out = hf.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()  # the defaults otherwise
    ours = fastblt.generate(model, b"def add(a, b):", max_new_bytes=24)
    want = [b + 4 for b in ours.bytes]
    got = out[: out.index(2)] if 2 in out else out  # transformers keeps the EOS id (2), we stop before it
    assert got == want
