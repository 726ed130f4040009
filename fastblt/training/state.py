"""Run folders, atomic checkpoints and the optimisation schedule (Fast BLT, arXiv 2605.08044 §4;
BLT, arXiv 2412.09871 §4.8 for AdamW).

Layout of a run folder ``--out``:
    last/config.json, last/model.safetensors   weights (fastblt.checkpoint format, fp32)
    last/trainer_state.json                    step, run config, optimizer settings, RNG states (JSON)
    last/optimizer.safetensors                 optimizer moments and RNG byte states (tensors)
    log.jsonl, loss.png, run.json              training log, curves, final figures
    .lock                                      the pid of the process training in this folder

Nothing here is unpickled: trainer state is JSON + safetensors. (Checkpoints of older fastblt
versions, ``trainer_state.pt``, are still read with ``torch.load(weights_only=True)``, allowing only
numpy's array reconstruction on top of torch's tensor types: see :data:`LEGACY_ALLOWED`.)

``last/`` is replaced as a whole (:func:`swap_in`): a new checkpoint is written into a hidden
``.last.tmp<pid>`` folder, the old ``last`` is renamed to ``.last.old``, the new one to ``last``,
and the old one deleted. A crash at any point leaves ``last`` or ``.last.old`` complete;
:func:`find_last` picks whichever exists and :func:`open_run_folder` repairs the folder at the next
start. Files get the process umask's mode (as ``config.json`` always did).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import random
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from .. import checkpoint

STATE_NAME = "trainer_state.json"
TENSORS_NAME = "optimizer.safetensors"
LEGACY_STATE_NAME = "trainer_state.pt"
LOCK_NAME = ".lock"
RUN_FILES = ("last", ".last.old", "log.jsonl", "loss.png", "run.json")  # what --overwrite removes
# The only non-torch types a legacy trainer_state.pt may contain (numpy's RNG state array).
LEGACY_ALLOWED = (np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)))


def say(msg: str) -> None:
    """A notice about the run folder (stderr)."""
    print(msg, file=sys.stderr, flush=True)


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup over ``warmup`` steps to
    ``peak``, then cosine decay to 0 at ``total`` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    frac = min(1.0, (step - warmup) / (total - warmup))
    return 0.5 * peak * (1.0 + math.cos(math.pi * frac))


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW(β 0.9/0.95, ε 1e-8); weight decay on matrices (dim ≥ 2, embeddings included) only."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move the optimizer's state tensors (not the scalar step counters) to ``device``."""
    for s in optimizer.state.values():
        for k, v in s.items():
            if torch.is_tensor(v) and k != "step":
                s[k] = v.to(device)


# ---------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _split_rng(st: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """JSON part of an RNG state; its arrays go into ``tensors``."""
    name, keys, pos, has_gauss, gauss = st["numpy"]
    tensors["rng.torch"] = st["torch"]
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    for i, c in enumerate(st.get("cuda", [])):
        tensors[f"rng.cuda.{i}"] = c
    version, internal, python_gauss = st["python"]
    return {"numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": [version, list(internal), python_gauss],
            "cuda": len(st.get("cuda", []))}


def _join_rng(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    name, pos, has_gauss, gauss = js["numpy"]
    version, internal, python_gauss = js["python"]
    st: dict[str, Any] = {"torch": tensors["rng.torch"],
                          "numpy": (name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss),
                          "python": (version, tuple(internal), python_gauss)}
    if js["cuda"]:
        st["cuda"] = [tensors[f"rng.cuda.{i}"] for i in range(js["cuda"])]
    return st


# ---------------------------------------------------------------------------- trainer state (no pickle)
def write_trainer_state(folder: Path, optimizer: torch.optim.Optimizer, step: int, run_config: dict[str, Any],
                        extra: dict[str, Any] | None = None) -> None:
    """``folder/trainer_state.json`` + ``folder/optimizer.safetensors``: everything ``--resume`` needs."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for idx, s in sd["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{idx}.{k}"] = v
            else:
                state_json.setdefault(str(idx), {})[k] = v
    doc = {"format": "fastblt-trainer-state", "version": 1, "step": int(step), "run_config": run_config,
           "extra": extra or {}, "param_groups": sd["param_groups"], "state_scalars": state_json,
           "state_ids": [int(i) for i in sd["state"]], "rng": _split_rng(rng_state(), tensors)}
    checkpoint.atomic_save_tensors(tensors, folder / TENSORS_NAME, metadata={"format": "fastblt-trainer-state"})
    checkpoint.atomic_write_bytes(folder / STATE_NAME, json.dumps(doc, indent=1).encode())


def load_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    """{"optimizer": state_dict, "step", "rng", "run_config", "extra"} of a checkpoint folder.

    Reads JSON + safetensors (nothing is unpickled); a legacy ``trainer_state.pt`` is read with
    ``torch.load(weights_only=True)``. Raises ValueError naming the file if it is unreadable.
    """
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / STATE_NAME
    if not path.exists() and (ckpt_dir / LEGACY_STATE_NAME).exists():
        legacy = ckpt_dir / LEGACY_STATE_NAME
        try:
            with torch.serialization.safe_globals(list(LEGACY_ALLOWED)):
                return torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure: a file we refuse to trust
            raise ValueError(f"{legacy} cannot be read safely (weights_only=True): {e}") from None
    try:
        doc = json.loads(path.read_bytes())
        tensors = load_file(str(ckpt_dir / TENSORS_NAME))
        state: dict[int, dict[str, Any]] = {}
        for i in doc["state_ids"]:
            s = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"optimizer.{i}.")}
            s.update(doc["state_scalars"].get(str(i), {}))
            state[int(i)] = s
        groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
                  for g in doc["param_groups"]]
        return {"optimizer": {"state": state, "param_groups": groups}, "step": int(doc["step"]),
                "rng": _join_rng(doc["rng"], tensors), "run_config": doc["run_config"], "extra": doc.get("extra", {})}
    except FileNotFoundError as e:
        raise ValueError(f"{ckpt_dir} is not a complete checkpoint: {e.filename} is missing") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{path} (or {TENSORS_NAME} next to it) is not a valid trainer state: "
                         f"{type(e).__name__}: {e}") from None


def _complete(d: Path) -> bool:
    return (d / checkpoint.WEIGHTS_NAME).exists() and ((d / STATE_NAME).exists() and (d / TENSORS_NAME).exists()
                                                      or (d / LEGACY_STATE_NAME).exists())


def find_last(out: Path) -> Path | None:
    """The newest complete checkpoint folder of a run (``last`` or, after a crash mid-swap, ``.last.old``)."""
    for name in ("last", ".last.old"):
        d = Path(out) / name
        if _complete(d):
            return d
    return None


def resolve_model_dir(path: str | Path) -> Path:
    """A checkpoint folder: ``path`` itself or ``path/last``. Raises FileNotFoundError otherwise."""
    p = Path(path)
    if (p / checkpoint.CONFIG_NAME).exists():
        return p
    if (p / "last" / checkpoint.CONFIG_NAME).exists():
        return p / "last"
    raise FileNotFoundError(f"no trained model at {p} (expected {p}/config.json or {p}/last/config.json)")


# ---------------------------------------------------------------------------- folder swaps
def swap_in(tmp: Path, dest: Path) -> None:
    """Replace folder ``dest`` by the complete folder ``tmp``; the old one is ``.{dest}.old`` meanwhile.

    A crash at any point leaves ``dest`` or ``.{dest}.old`` complete (:func:`recover` repairs it).
    """
    old = dest.with_name(f".{dest.name}.old")
    if dest.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(tmp, dest)  # until here, old (or dest) holds the previous good copy
    if old.exists():
        shutil.rmtree(old)


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)(?P<pid>\d*)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(dest: Path, say=say) -> None:
    """Repair ``dest`` after a crashed :func:`swap_in` (or an older export's ``.{dest}.old<pid>``):
    restore the previous copy if ``dest`` is missing, and remove leftover ``.{dest}.tmp<pid>`` /
    ``.{dest}.old`` folders and files of processes that are no longer running."""
    parent = dest.parent
    if not parent.is_dir():
        return
    leftovers = []
    for p in parent.iterdir():
        m = _TEMP.match(p.name)
        if m and m.group("name") == dest.name and not (m.group("pid") and int(m.group("pid")) != os.getpid()
                                                       and _alive(int(m.group("pid")))):
            leftovers.append(p)
    olds = sorted((p for p in leftovers if ".old" in p.name[len(dest.name) + 1:] and p.is_dir()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    if not dest.exists() and olds:
        say(f"fastblt: {dest} was missing after an interrupted swap; restored it from {olds[0].name}")
        os.replace(olds[0], dest)
        leftovers.remove(olds[0])
    for p in leftovers:
        say(f"fastblt: removing {p}, left over by a crashed save")
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def save_checkpoint(out: Path, model, optimizer: torch.optim.Optimizer, step: int, run_config: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> Path:
    """Write weights + trainer state for ``step`` completed steps into ``out/last`` atomically.

    Raises checkpoint.DiskFullError ("no space left on the device holding OUT") when the device is
    full; the temporary folder is removed and the previous checkpoint kept.
    """
    out = Path(out)
    tmp = out / f".last.tmp{os.getpid()}"
    with checkpoint.writing(out, tmp):
        if tmp.exists():
            shutil.rmtree(tmp)
        checkpoint.save(model, tmp, extra={"training": {"step": step, **(extra or {})}})
        write_trainer_state(tmp, optimizer, step, run_config, extra)
        swap_in(tmp, out / "last")
    return out / "last"


# ---------------------------------------------------------------------------- the run folder
def _is_run(out: Path) -> bool:
    return any((out / n).exists() for n in RUN_FILES)


@contextmanager
def lock(out: Path, say=say) -> Iterator[None]:
    """Hold ``out/.lock`` (an exclusive ``flock``, with our pid in it) for the duration.

    Raises RuntimeError naming the pid when another live process holds it. A lock file left by a
    dead process (its pid still written in it) is taken over, with a message.
    """
    path = out / LOCK_NAME
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            raise RuntimeError(f"{out} is in use by another training (pid {pid}); wait for it to finish, "
                               "or use another --out") from None
        f.seek(0)
        stale = f.read().strip()
        if stale and stale != str(os.getpid()):
            say(f"fastblt: took over the lock of {out} from pid {stale}, which is no longer running")
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        try:
            f.seek(0)
            f.truncate()  # released cleanly: nothing stale is left behind
        finally:
            f.close()


@contextmanager
def open_run_folder(out: Path, resume: bool, overwrite: bool, say=say) -> Iterator[None]:
    """Create/lock ``out`` for a training run and repair it; yields while the lock is held.

    Refuses (ValueError) an existing run unless ``resume`` or ``overwrite``; with ``overwrite`` the
    previous run's files (:data:`RUN_FILES`) are removed. Leftovers of crashed saves are removed
    and an interrupted swap is undone (see :func:`recover`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    with checkpoint.writing(out.parent if not out.exists() else out):
        out.mkdir(parents=True, exist_ok=True)
    with lock(out, say):
        recover(out / "last", say)
        for p in out.glob(".*.tmp[0-9]*"):  # atomic_write_bytes temporaries (log.jsonl, run.json) of a crash
            if p.is_file():
                say(f"fastblt: removing {p}, left over by a crashed write")
                p.unlink()
        if _is_run(out) and not resume:
            if not overwrite:
                raise ValueError(f"{out} already holds a training run: pass --resume to continue it or "
                                 "--overwrite to replace it (its checkpoint and log are deleted)")
            say(f"fastblt: --overwrite: removing the previous run in {out}")
            for n in RUN_FILES:
                p = out / n
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        yield


def read_log(path: Path, upto_step: int | None = None, say=say) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl`` (those with step ≤ ``upto_step``, if given).

    A torn last line (a crash mid-write) is dropped with a message; a malformed line elsewhere
    raises ValueError naming the file and line number.
    """
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    recs = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if all(not x.strip() for x in lines[i + 1:]):
                say(f"fastblt: dropped the torn last line of {path} (line {i + 1}: {line[:40]!r}…)")
                break
            raise ValueError(f"{path}: line {i + 1} is not a JSON record ({e}); fix or remove it") from None
        if upto_step is None or rec.get("step", 0) <= upto_step:
            recs.append(rec)
    return recs


