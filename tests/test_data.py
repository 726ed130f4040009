"""Fast tests of the data pipeline on tiny fake source trees (no apt/pip calls)."""
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from fastblt.config import VOCAB_SIZE
from fastblt.data import corpus
from fastblt.data.dataset import BOS, EOS, OFFSET, ByteDataset, iter_documents
from fastblt.data.heldout import NAMES, load_heldout


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _fake_stdlib(root: Path) -> Path:
    _write(root / "os2.py", b"import sys\n")
    _write(root / "json2/decoder.py", b"def f():\n    return 1\n")
    _write(root / "latin.py", b"# caf\xe9 \xff\xfe\n")  # not UTF-8: must survive as raw bytes
    _write(root / "empty.py", b"")
    _write(root / "notes.txt", b"not python")
    for skipped in ("test/test_os.py", "unittest/tests/t.py", "idlelib/idle_test/x.py", "site-packages/pkg/m.py"):
        _write(root / skipped, b"x = 1\n")
    return root


HELP_EN = """<html><body><div id="DisplayArea">
<h1 id="hd_id1" dir="auto">Find Bar</h1>
<p id="par_id2" class="paragraph">The <span class="menuitem">Find</span> toolbar searches &amp; replaces text in documents.</p>
<p id="par_id3">Short.</p>
<p id="par_id4">This paragraph is left untranslated in French.</p>
<p id="par_id5">Press <span class="switchinline"><span hidden="true" id="MACx" class="MAC">Command</span><span hidden="true" id="defaultx">Ctrl</span></span>+F to open it.</p>
<p id="par_id6">Only English has this paragraph here.</p>
</div></body></html>"""
HELP_FR = """<html><body>
<p id="par_id5">Appuyez sur <span class="switchinline"><span hidden="true" id="MACx" class="MAC">Commande</span><span hidden="true" id="defaultx">Ctrl</span></span>+F pour l'ouvrir.</p>
<p id="par_id2" class="paragraph">La barre <span>Rechercher</span> cherche &amp; remplace du texte.</p>
<h1 id="hd_id1">Barre de recherche</h1>
<p id="par_id3">Court.</p>
<p id="par_id4">This paragraph is left untranslated in French.</p>
</body></html>"""


def _fake_help(root: Path) -> dict:
    for lang, text in (("en-US", HELP_EN), ("fr", HELP_FR)):
        _write(root / lang / "text/shared/find.html", text.encode())
    _write(root / "en-US/text/shared/only_en.html", HELP_EN.encode())  # no French file: no pairs
    return {"en": root / "en-US", "fr": root / "fr"}


def test_split_is_deterministic_and_by_file(tmp_path):
    names = [f"pkg{i}/mod{i}.py" for i in range(3000)]
    splits = [corpus.split_of(n) for n in names]
    assert splits == [corpus.split_of(n) for n in names]
    counts = Counter(splits)
    assert 0.87 < counts["train"] / 3000 < 0.93 and counts["val"] > 90 and counts["test"] > 90
    pairs = corpus.collect_libreoffice(_fake_help(tmp_path))
    assert {p.split for p in pairs} == {corpus.split_of("text/shared/find.html")}
    assert corpus.play_key("hamlet_gut.txt") == corpus.play_key("hamlet_gut_f.txt")
    assert corpus.play_key("twelfe-night_gut_f.txt") == corpus.play_key("twelfth_night_gut.txt")


def test_translation_pairs_align_by_id(tmp_path):
    pairs = corpus.collect_libreoffice(_fake_help(tmp_path))
    got = {p.pid: (p.src, p.en) for p in pairs}
    assert got == {
        "par_id2": ("La barre Rechercher cherche & remplace du texte.",
                    "The Find toolbar searches & replaces text in documents."),
        "par_id5": ("Appuyez sur Ctrl+F pour l'ouvrir.", "Press Ctrl+F to open it."),
    }  # hd_id1 and par_id3 too short, par_id4 untranslated, par_id6 has no French
    p = next(p for p in pairs if p.pid == "par_id5")
    assert p.id == "text/shared/find.html#par_id5"
    assert p.doc().data == b"French: Appuyez sur Ctrl+F pour l'ouvrir.\nEnglish: Press Ctrl+F to open it.\n"
    assert corpus.keep_english("A" * 20) and not corpus.keep_english("x = f(1, 2); y = g(3, 4); z")


def test_code_collection_skips_tests_and_empty_files(tmp_path):
    docs = corpus.collect_code(_fake_stdlib(tmp_path / "lib"))
    assert sorted(d.path for d in docs) == ["json2/decoder.py", "latin.py", "os2.py"]
    assert all(d.data for d in docs)
    _write(tmp_path / "src/a.rst.txt", b"Title\n=====\n")
    _write(tmp_path / "src/b.rst.txt", b"")
    assert [d.path for d in corpus.collect_python_docs(tmp_path / "src")] == ["a.rst.txt"]


def test_bin_idx_round_trip_keeps_raw_bytes(tmp_path):
    docs = corpus.collect_code(_fake_stdlib(tmp_path / "lib"))
    docs += [corpus.Doc("fake", "prose", f"p{i}.txt", s, f"doc {i} in {s}\n".encode())
             for i, s in enumerate(["train", "val", "test"] * 3)]
    out = tmp_path / "corpus"
    m = corpus.build_corpus(docs, out, max_bytes=10**6, weights={"code": 45, "prose": 35, "translation": 20})
    for split in corpus.SPLITS:
        want = sorted(d.data for d in docs if d.split == split)
        ds = ByteDataset(out / split)
        idx = np.load(out / f"{split}.idx.npy")
        assert idx.dtype == np.int64 and len(idx) == len(want) + 1 and idx[-1] == (out / f"{split}.bin").stat().st_size
        assert sorted(ds.documents()) == want
        assert sorted(iter_documents(split, root=out)) == want
        assert m["splits"][split]["sha256"] == hashlib.sha256((out / f"{split}.bin").read_bytes()).hexdigest()
    latin = next(d for d in docs if d.path == "latin.py")
    assert b"\xff\xfe" in latin.data and latin.data in list(ByteDataset(out / latin.split).documents())
    assert json.loads((out / "manifest.json").read_text())["sources"]["python-stdlib"]["category"] == "code"


def test_train_cap_and_mix(tmp_path):
    docs = [corpus.Doc(c, c, f"{c}{i}", "train", bytes([65 + i % 26]) * 100) for c in corpus.CATEGORIES for i in range(100)]
    m = corpus.build_corpus(docs, tmp_path, max_bytes=5000, weights={"code": 45, "prose": 35, "translation": 20})
    assert m["splits"]["train"]["bytes"] == 2200 + 1700 + 1000  # whole 100-byte docs under 2250/1750/1000
    assert m["train_budget_bytes"] == {"code": 2250, "prose": 1750, "translation": 1000}
    assert corpus.water_fill({"a": 10, "b": 1000}, {"a": 1, "b": 1}, 100) == {"a": 10, "b": 90}


def test_sample_batch_is_deterministic_and_well_formed(tmp_path):
    docs = [corpus.Doc("fake", "prose", f"d{i}", "train", bytes(range(i * 40, i * 40 + 37 + i))) for i in range(6)]
    docs.append(corpus.Doc("fake", "prose", "hi", "train", b"\xff\x00\x80"))
    corpus.build_corpus(docs, tmp_path, max_bytes=10**6, weights={"prose": 1})
    ds = ByteDataset(tmp_path / "train")
    a = ds.sample_batch(step=7, batch_size=8, seq_len=64, seed=3)
    assert a.shape == (8, 65) and a.dtype == torch.int64
    assert (a == ds.sample_batch(7, 8, 64, 3)).all()               # same (seed, step): same batch
    assert (a[:4] == ds.sample_batch(7, 4, 64, 3)).all()           # a row depends on (seed, step, row) only
    assert not (a == ds.sample_batch(8, 8, 64, 3)).all()
    assert not (a == ds.sample_batch(7, 8, 64, 4)).all()
    assert (a[:, 0] == BOS).all() and a.min() >= 0 and a.max() < VOCAB_SIZE
    # every row (after its BOS) is a window of the cyclic BOS+doc+EOS stream
    stream = np.concatenate([[BOS, *(np.frombuffer(d, np.uint8).astype(np.int64) + OFFSET), EOS] for d in ds.documents()])
    cyc = np.concatenate([stream, stream])
    for row in a.numpy():
        assert any((cyc[s:s + 64] == row[1:]).all() for s in range(len(stream)))
    assert 0xFF + OFFSET in stream and OFFSET in stream  # bytes 0xff and 0x00 map to 259 and 4


def test_heldout_records_from_fake_corpus(tmp_path):
    pairs = corpus.collect_libreoffice(_fake_help(tmp_path))
    sets = corpus.heldout_records([], [corpus.Pair(p.lang, p.file, p.pid, p.src, p.en, "test") for p in pairs])
    assert len(sets["translation_test"]) == 2
    hashes = corpus.write_heldout(sets, tmp_path / "h", "cmd", [])
    assert hashes["translation_test.jsonl"] in (tmp_path / "h/README.md").read_text()


def test_load_heldout_returns_committed_records():
    tt = load_heldout("translation_test")
    assert Counter(r["src_lang"] for r in tt) == {"fr": 200, "de": 200}
    assert all(r["tgt_lang"] == "en" and r["src"] != r["tgt"] and re.search(r"\.html#(par|hd)_id", r["id"]) for r in tt)
    assert len({r["id"] + r["src_lang"] for r in tt}) == 400
    shots = load_heldout("translation_shots.jsonl")
    assert Counter(r["src_lang"] for r in shots) == {"fr": 8, "de": 8}
    assert not {r["id"] for r in shots} & {r["id"] for r in tt}
    for name in ("code_test", "prose_test"):
        recs = load_heldout(name)
        assert len(recs) == 50 and all(0 < len(r["text"].encode()) <= 2048 for r in recs)
    readme = (Path(corpus.HELDOUT_DIR) / "README.md").read_text()
    for name in NAMES:
        assert hashlib.sha256((Path(corpus.HELDOUT_DIR) / f"{name}.jsonl").read_bytes()).hexdigest() in readme
