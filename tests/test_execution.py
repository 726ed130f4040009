"""The code-execution sandbox (fastblt.evaluation.execution): opt-in, limits, containment."""
import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from fastblt.evaluation import execution as X

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox uses Linux rlimits/namespaces")


@pytest.fixture
def allowed(monkeypatch):
    monkeypatch.setenv(X.ENV_VAR, "1")


def _alive_with(marker: str) -> list[int]:
    """Pids (host view) of live, non-zombie processes whose command line contains ``marker``."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmd and state != "Z":
            found.append(int(p.name))
    return found


def test_refused_without_env_variable(monkeypatch):
    monkeypatch.delenv(X.ENV_VAR, raising=False)
    with pytest.raises(X.CodeExecutionNotAllowed, match=X.ENV_VAR):
        X.run_untrusted("print(1)")
    with pytest.raises(X.CodeExecutionNotAllowed, match="--allow-code-execution"):
        X.check_opt_in(True)


def test_flag_and_env_both_needed(monkeypatch):
    monkeypatch.setenv(X.ENV_VAR, "1")
    with pytest.raises(X.CodeExecutionNotAllowed):
        X.check_opt_in(False)
    X.check_opt_in(True)
    monkeypatch.setenv(X.ENV_VAR, "yes")  # only "1" counts, as in HF evaluate
    with pytest.raises(X.CodeExecutionNotAllowed):
        X.check_opt_in(True)


def test_pass_fail_timeout(allowed):
    ok = X.run_untrusted("assert sum(range(4)) == 6\nprint('hi')")
    assert (ok.passed, ok.status, ok.returncode, ok.stdout) == (True, "passed", 0, "hi\n")
    bad = X.run_untrusted("assert 1 == 2")
    assert (bad.passed, bad.status) == (False, "failed") and "AssertionError" in bad.stderr
    main = X.run_untrusted("import sys\nif __name__ == '__main__':\n    sys.exit(3)")
    assert (main.status, main.returncode) == ("failed", 3)
    slow = X.run_untrusted("while True: pass", timeout_s=0.5)
    assert (slow.passed, slow.status, slow.returncode) == (False, "timeout", None)


@pytest.mark.parametrize("kw", [{"timeout_s": 0}, {"timeout_s": float("nan")}, {"timeout_s": True},
                                {"memory_mb": 8}, {"memory_mb": 1.5e3}])
def test_bad_limits(allowed, kw):
    with pytest.raises(ValueError):
        X.run_untrusted("pass", **kw)


def test_environment_is_not_inherited(allowed, monkeypatch):
    monkeypatch.setenv("FASTBLT_TEST_SECRET", "hunter2")
    r = X.run_untrusted("import os; print(os.environ.get('FASTBLT_TEST_SECRET'))")
    assert r.stdout == "None\n"


@pytest.mark.parametrize("namespaces", [True, False])
def test_file_child_and_4gb_are_contained(allowed, tmp_path, monkeypatch, namespaces):
    """The issue's example: a completion that writes a file, spawns a child and allocates 4 GB."""
    if not namespaces:
        monkeypatch.setattr(X, "isolation", list)
    monkeypatch.chdir(tmp_path)
    marker = f"fastblt-sandbox-child-{os.getpid()}"
    program = textwrap.dedent(f"""
        import os, subprocess, sys
        open("escape.txt", "w").write("x")
        print(os.getcwd(), flush=True)
        # a child that leaves the process group and would run for a minute
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{marker}"], start_new_session=True)
        block = bytearray(4 * 1024 ** 3)
        print("allocated 4 GB", flush=True)
    """)
    r = X.run_untrusted(program, timeout_s=20, memory_mb=512)
    assert not r.passed and r.status == "memory", r
    assert "allocated" not in r.stdout
    cwd = Path(r.stdout.splitlines()[0])
    assert cwd != tmp_path and not cwd.exists()  # its fresh working folder is gone, with escape.txt
    assert not (tmp_path / "escape.txt").exists()
    if r.isolated:  # the PID namespace took the setsid'd child down with the program
        assert _alive_with(marker) == []
    else:  # without namespaces a setsid'd child escapes the process group (documented); clean up
        for pid in _alive_with(marker):
            os.kill(pid, 9)


@pytest.mark.parametrize("namespaces", [True, False])
def test_children_in_the_group_are_killed(allowed, monkeypatch, namespaces):
    if not namespaces:  # the fallback: process-group kill only
        monkeypatch.setattr(X, "isolation", list)
    marker = f"fastblt-sandbox-group-{os.getpid()}"
    r = X.run_untrusted(f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', "
                        f"'import time; time.sleep(60)', '{marker}'])\n")
    assert r.passed
    assert _alive_with(marker) == []


def test_no_network_when_isolated(allowed):
    if not X.isolation():
        pytest.skip("no network namespace on this platform (documented in the README)")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        r = X.run_untrusted(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
    finally:
        server.close()
    assert r.status == "failed" and ("unreachable" in r.stderr or "refused" in r.stderr), r.stderr
