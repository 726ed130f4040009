"""Run folders that never lose work: reuse refused, one run per folder, torn log lines, leftovers of
crashed saves and exports, a full disk, SIGTERM, file modes, and trainer state without pickle."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from fastblt import checkpoint
from fastblt.training import state as S
from fastblt.training import train as T


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = [b"def ", b"return ", b"the ", b"cat ", b"x = 1\n", b"print(x)\n"]
    docs = [b"".join(words[i] for i in rng.integers(0, len(words), 40)) for _ in range(12)]
    for name, part in (("train", docs[:10]), ("val", docs[10:])):
        (root / f"{name}.bin").write_bytes(b"".join(part))
        np.save(root / f"{name}.idx.npy", np.cumsum([0] + [len(d) for d in part]).astype(np.int64))
    return root


def _args(out: Path, data: Path, **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    T.add_arguments(p)
    argv = ["--out", str(out), "--data", str(data), "--objective", "entropy", "--preset", "tiny", "--batch-size", "2",
            "--seq-len", "32", "--steps", "6", "--eval-every", "0", "--eval-batches", "1", "--save-every", "2",
            "--no-progress", "--no-plot", "--threads", "1"]
    for k, v in kw.items():
        argv += ["--" + k.replace("_", "-")] + ([] if v is True else [str(v)])
    return p.parse_args(argv)


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _step(out: Path) -> int:
    return S.load_trainer_state(out / "last")["step"]


@pytest.fixture
def run_a(corpus, tmp_path) -> Path:
    out = tmp_path / "runA"
    assert T.run(_args(out, corpus, stop_after_steps=4)) == 0  # step 4 of 6: resumable
    return out


# ---------------------------------------------------------------------------- reuse, lock
def test_rerun_without_resume_refused_and_nothing_lost(run_a, corpus):
    """The issue's example: re-running `train --out runA` replaced a finished run (41 log lines → 2)."""
    lines, weights = _log(run_a), (run_a / "last" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds a training run: pass --resume .* or --overwrite"):
        T.run(_args(run_a, corpus, steps=2))
    assert _log(run_a) == lines and _step(run_a) == 4
    assert (run_a / "last" / "model.safetensors").read_bytes() == weights
    assert T.run(_args(run_a, corpus, steps=2, overwrite=True)) == 0  # explicit: a fresh run
    assert _step(run_a) == 2 and len(_log(run_a)) == 3  # 2 steps + the final eval
    with pytest.raises(ValueError, match="pass one of them"):
        T.run(_args(run_a, corpus, resume=True, overwrite=True))


def test_one_run_per_folder(run_a, corpus):
    with S.lock(run_a):  # another training holds the folder (flock: a second open file conflicts)
        with pytest.raises(RuntimeError, match=f"in use by another training \\(pid {os.getpid()}\\)"):
            T.run(_args(run_a, corpus, resume=True))
    assert _step(run_a) == 4


def test_stale_lock_of_dead_pid_taken_over(run_a, corpus, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_a / S.LOCK_NAME).write_text(f"{dead.pid}\n")  # its process died without cleaning up
    assert T.run(_args(run_a, corpus, resume=True)) == 0
    assert f"took over the lock of {run_a} from pid {dead.pid}" in capsys.readouterr().err
    assert (run_a / S.LOCK_NAME).read_text() == ""  # released cleanly
    assert _step(run_a) == 6


# ---------------------------------------------------------------------------- log and leftovers
def test_torn_last_log_line_dropped_on_resume(run_a, corpus, capsys):
    with open(run_a / "log.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 2.7')  # a crash mid-write
    assert T.run(_args(run_a, corpus, resume=True)) == 0
    assert f"dropped the torn last line of {run_a / 'log.jsonl'}" in capsys.readouterr().err
    steps = [r["step"] for r in _log(run_a) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_malformed_middle_log_line_named(run_a, corpus):
    lines = (run_a / "log.jsonl").read_text().splitlines()
    lines[1] = "garbage"
    (run_a / "log.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{run_a / 'log.jsonl'}: line 2 is not a JSON record"):
        T.run(_args(run_a, corpus, resume=True))


def test_leftover_temp_folders_removed_at_start(run_a, corpus, capsys):
    for name in (".last.tmp999999999", ".last.old", ".log.jsonl.tmp999999999"):
        p = run_a / name
        p.mkdir() if "last" in name else p.write_text("x")
    (run_a / ".last.tmp999999999" / "junk").write_text("x")
    assert T.run(_args(run_a, corpus, resume=True)) == 0
    assert sorted(p.name for p in run_a.iterdir() if p.name.startswith(".")) == [S.LOCK_NAME]
    assert "left over by a crashed save" in capsys.readouterr().err


def test_crash_between_renames_recovered(run_a, corpus, capsys):
    os.replace(run_a / "last", run_a / ".last.old")  # killed after moving last away, before the new one
    assert S.find_last(run_a) == run_a / ".last.old"
    assert T.run(_args(run_a, corpus, resume=True)) == 0
    assert "restored it from .last.old" in capsys.readouterr().err
    assert _step(run_a) == 6


def test_export_crash_point_recovered(tmp_path, capsys):
    """A crashed export left DEST missing with the old model only in `.DEST.old<pid>`."""
    from helpers import tiny_model

    dest = tmp_path / "model"
    checkpoint.save(tiny_model(), tmp_path / ".model.old999999999")
    (tmp_path / ".model.tmp999999999").mkdir()
    S.recover(dest)
    assert checkpoint.load(dest) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert "restored it from .model.old999999999" in capsys.readouterr().err


def test_swap_in_keeps_a_complete_copy_at_every_point(tmp_path, monkeypatch):
    dest, new = tmp_path / "d", tmp_path / ".d.tmp1"
    dest.mkdir(), new.mkdir()
    (dest / "f").write_text("old"), (new / "f").write_text("new")
    real = os.replace
    calls = []

    def crash_second(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between the two renames
        real(a, b)

    monkeypatch.setattr(S.os, "replace", crash_second)
    with pytest.raises(KeyboardInterrupt):
        S.swap_in(new, dest)
    monkeypatch.undo()
    S.recover(dest)
    assert (dest / "f").read_text() == "old"


# ---------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("error", [
    SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                    "\"No space left on device\" })"),
    OSError(28, "No space left on device"),
])
def test_disk_full_message_and_no_leftover(run_a, error, monkeypatch):
    def full(*a, **k):
        raise error

    monkeypatch.setattr(checkpoint, "save_file", full)
    model, opt = checkpoint.load(run_a / "last"), None
    opt = S.build_optimizer(model, 1e-3)
    with pytest.raises(checkpoint.DiskFullError, match=f"no space left on the device holding {run_a}"):
        S.save_checkpoint(run_a, model, opt, 9, {})
    assert not [p for p in run_a.iterdir() if p.name.startswith(".last")]
    assert _step(run_a) == 4  # the previous checkpoint is kept, and --resume is not blocked


def test_disk_full_opaque_torch_error(tmp_path, monkeypatch):
    """torch.save's "[enforce fail at inline_container.cc]" says nothing: the free space decides."""
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(checkpoint.DiskFullError, match=f"no space left on the device holding {tmp_path}"):
        with checkpoint.writing(tmp_path):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 320 vs 0")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root to mount a tmpfs")
def test_disk_full_on_a_real_full_device(tmp_path):
    """A 1 MiB tmpfs in a private mount namespace: the save fails with the message, nothing is left."""
    d = tmp_path / "small"
    d.mkdir()
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from helpers import tiny_model; "
            "from fastblt import checkpoint; from fastblt.training import state as S\n"
            "m = tiny_model()\n"
            "try:\n    S.save_checkpoint(sys.argv[1], m, S.build_optimizer(m, 1e-3), 1, {})\n"
            "except checkpoint.DiskFullError as e:\n    print('MSG', e)\n"
            "import os; print('LEFT', sorted(os.listdir(sys.argv[1])))\n")
    tests = str(Path(__file__).parent)
    p = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$1" -c "$2" "$0" "$3"',
                        str(d), sys.executable, code, tests], capture_output=True, text=True, cwd=Path(tests).parent)
    if "mount" in p.stderr and p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    assert f"MSG no space left on the device holding {d}" in p.stdout, p.stdout + p.stderr
    assert "LEFT []" in p.stdout, p.stdout


# ---------------------------------------------------------------------------- SIGTERM, modes, no pickle
def test_sigterm_saves_like_ctrl_c(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = T.train_step

    def step_then_sigterm(*a, **k):
        rec = real(*a, **k)
        if rec["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what a cluster scheduler sends
        return rec

    monkeypatch.setattr(T, "train_step", step_then_sigterm)
    assert T.run(_args(out, corpus, steps=10, save_every=100)) == 0
    assert _step(out) == 3
    assert json.loads((out / "run.json").read_text())["result"]["stop_reason"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_follow_the_umask(corpus, tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        assert T.run(_args(out, corpus, steps=2)) == 0
        checkpoint.save(checkpoint.load(out / "last"), tmp_path / "export")
    finally:
        os.umask(old)
    files = [out / "last" / n for n in ("config.json", "model.safetensors", S.STATE_NAME, S.TENSORS_NAME)]
    files += [out / "log.jsonl", out / "run.json", tmp_path / "export" / "model.safetensors"]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: oct(0o666 & ~umask) for f in files}


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_trainer_state_is_never_unpickled(run_a, corpus, tmp_path):
    """The issue's example: a crafted run folder ran code at --resume, because the old loader unpickled it."""
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    last = run_a / "last"
    (last / S.STATE_NAME).unlink()
    (last / S.TENSORS_NAME).unlink()
    with open(last / S.LEGACY_STATE_NAME, "wb") as f:  # an old-style state file carrying a payload
        pickle.dump({"step": 4, "evil": payload}, f)
    with pytest.raises(ValueError, match=f"{last / S.LEGACY_STATE_NAME} cannot be read safely"):
        T.run(_args(run_a, corpus, resume=True))
    assert not marker.exists()
    # the new format holds no pickle at all: JSON + safetensors
    assert T.run(_args(run_a, corpus, steps=2, overwrite=True)) == 0
    json.loads((run_a / "last" / S.STATE_NAME).read_text())
    assert b"\x80" not in (run_a / "last" / S.STATE_NAME).read_bytes()[:2]


def test_legacy_trainer_state_still_resumes(run_a, corpus):
    """Checkpoints written before the JSON + safetensors format (trainer_state.pt) resume exactly."""
    last = run_a / "last"
    st = S.load_trainer_state(last)
    legacy = {"optimizer": st["optimizer"], "step": st["step"], "rng": st["rng"], "run_config": st["run_config"]}
    torch.save(legacy, last / S.LEGACY_STATE_NAME)
    (last / S.STATE_NAME).unlink()
    (last / S.TENSORS_NAME).unlink()
    again = S.load_trainer_state(last)
    assert again["step"] == 4 and torch.equal(again["rng"]["torch"], st["rng"]["torch"])
    assert T.run(_args(run_a, corpus, resume=True)) == 0 and _step(run_a) == 6


def test_seed_out_of_range_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="--seed"):
        T.run(_args(tmp_path / "r", corpus, seed=2**64))
