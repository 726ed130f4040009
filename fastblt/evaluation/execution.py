"""Running untrusted, model-generated programs (HumanEval / MBPP scoring) in a contained subprocess.

A generated completion is arbitrary code. Scoring pass@1 (Fast BLT §8.3, HumanEval) means running
it, so this module is the one place that does, and only on explicit opt-in, as the Hugging Face
``evaluate`` ``code_eval`` metric does: the caller passes a flag (``--allow-code-execution`` on the
command line) **and** the environment variable ``FASTBLT_ALLOW_CODE_EXECUTION=1`` must be set.

Each program runs in a fresh Python (``-I``: no user site-packages, no ``PYTHON*`` variables) with:

- a wall-clock time limit; afterwards the whole process group is killed (SIGKILL);
- a memory limit (``RLIMIT_AS``), no core files, a 64 MiB limit on the size of any file it writes;
- a fresh temporary working directory (also its ``HOME`` and ``TMPDIR``), deleted afterwards, and an
  environment reduced to ``PATH`` and ``LANG`` (no credentials inherited);
- when the platform allows it (Linux ``unshare`` as root, or with unprivileged user namespaces):
  a new **network namespace** (no network, loopback down) and a new **PID namespace**, so that
  every process it spawns, including daemonised ones, dies with it.

Not contained: the file system outside the working directory is reachable with the caller's
permissions (run evaluations as an unprivileged user or in a container), and without namespaces
a child that leaves the process group (``setsid``) can outlive the run, and the network is open.
:func:`isolation` reports which case applies; :class:`ExecResult` records it for every run.
"""
from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "FASTBLT_ALLOW_CODE_EXECUTION"
OUTPUT_LIMIT = 64 * 1024  # characters of stdout / stderr kept in the result
FILE_SIZE_LIMIT = 64 * 1024 * 1024  # bytes: RLIMIT_FSIZE of the program
_UNSHARE_FLAGS = (["--net", "--pid", "--fork", "--kill-child"],
                  ["--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"])


class CodeExecutionNotAllowed(ValueError):
    """Raised when untrusted code would run without the explicit opt-in."""


def opt_in_message(flag: str = "--allow-code-execution") -> str:
    return (f"scoring HumanEval/MBPP executes model-generated code. It runs in a subprocess with time and memory "
            f"limits, a temporary folder and, where possible, no network; it can still read and write your files. "
            f"To allow it, pass {flag} and set the environment variable {ENV_VAR}=1")


def check_opt_in(allow: bool, flag: str = "--allow-code-execution") -> None:
    """Raise CodeExecutionNotAllowed unless ``allow`` is true and ``FASTBLT_ALLOW_CODE_EXECUTION=1``."""
    if not allow or os.environ.get(ENV_VAR) != "1":
        raise CodeExecutionNotAllowed(opt_in_message(flag))


@dataclass
class ExecResult:
    """The outcome of one :func:`run_untrusted` call.

    status: "passed" (exit code 0), "failed" (non-zero exit or killed by a signal), "timeout"
    (killed at the time limit) or "memory" (the program raised MemoryError at the memory limit).
    ``isolated``: whether it ran in new network + PID namespaces. ``seconds``: wall-clock.
    """

    passed: bool
    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolated: bool


@functools.cache
def isolation() -> list[str]:
    """The ``unshare`` prefix that gives a new network + PID namespace here, or [] if none works."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return []
    for flags in _UNSHARE_FLAGS:
        try:
            ok = subprocess.run([exe, *flags, "--", "true"], capture_output=True, timeout=10, check=False).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return [exe, *flags, "--"]
    return []


# The child's first statements: its own limits (no preexec_fn, which is unsafe in a threaded parent),
# then program.py as __main__.
_BOOT = ("import resource as r, runpy, sys\n"
         "m, f = int(sys.argv[1]), int(sys.argv[2])\n"
         "r.setrlimit(r.RLIMIT_AS, (m, m)); r.setrlimit(r.RLIMIT_CORE, (0, 0)); r.setrlimit(r.RLIMIT_FSIZE, (f, f))\n"
         "sys.argv = ['program.py']\n"
         "runpy.run_path('program.py', run_name='__main__')\n")


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is in group ``pgid`` (Linux /proc; elsewhere: unknown → False)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state ppid pgrp ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            return True
    return False


def _kill_group(pgid: int, wait_s: float = 2.0) -> None:
    """SIGKILL every process of group ``pgid`` and wait (up to ``wait_s``) until none is left running."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if not _group_alive(pgid) or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(OUTPUT_LIMIT + 1)
    return data[:OUTPUT_LIMIT].decode("utf-8", errors="replace")


def run_untrusted(program: str, timeout_s: float = 5.0, memory_mb: int = 1024) -> ExecResult:
    """Run the Python source ``program`` in a contained subprocess (see the module docstring).

    timeout_s: wall-clock limit in seconds (finite, > 0). memory_mb: address-space limit in MiB
    (>= 64). Returns an :class:`ExecResult`; never raises for anything the program does.
    Raises CodeExecutionNotAllowed unless ``FASTBLT_ALLOW_CODE_EXECUTION=1`` is set (front-ends
    also require their flag, see :func:`check_opt_in`); ValueError for bad limits.
    """
    if os.environ.get(ENV_VAR) != "1":
        raise CodeExecutionNotAllowed(opt_in_message())
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
        raise ValueError(f"memory_mb must be an integer >= 64, got {memory_mb!r}")
    prefix = isolation()
    with tempfile.TemporaryDirectory(prefix="fastblt-exec-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        (work / "program.py").write_text(program, encoding="utf-8")
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(work),
               "TMPDIR": str(work), "PYTHONHASHSEED": "0"}
        t0 = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            cmd = [*prefix, sys.executable, "-I", "-B", "-c", _BOOT, str(memory_mb * 1024 * 1024), str(FILE_SIZE_LIMIT)]
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
            try:
                rc: int | None = proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                rc, timed_out = None, True
            finally:
                _kill_group(proc.pid)  # the group: also children the program left running
                proc.wait()
                _kill_group(proc.pid)
        seconds = time.perf_counter() - t0
        stdout, stderr = _tail(out_path), _tail(err_path)
    if timed_out:
        status = "timeout"
    elif rc == 0:
        status = "passed"
    elif "MemoryError" in stderr:
        status = "memory"
    else:
        status = "failed"
    return ExecResult(passed=status == "passed", status=status, returncode=rc, stdout=stdout, stderr=stderr,
                      seconds=seconds, isolated=bool(prefix))
