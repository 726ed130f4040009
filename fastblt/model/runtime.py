"""Where and how a model runs for generation: device, dtype (``--device``, ``--dtype``) and the
optional ``torch.compile`` of a BLT's four components for incremental decoding (``--compile``).

On CUDA the default dtype is bfloat16 (half the weight bytes per step, Fast BLT eq. 8's b = 2);
on CPU float32. Exactness tests run in float32 on CPU; the CUDA path runs the same code.

Each decoding step calls the entropy model, the local encoder, the local decoder and, when a patch
closes, the global transformer; every call runs a few dozen small kernels, so on CPU most of the
time is dispatch overhead that a compiler can fuse away. :func:`compile_for_decoding` wraps each
component's ``forward`` in ``torch.compile(dynamic=True)`` (cache lengths vary from step to step).
Compiling takes minutes on a small CPU, so it pays only for long generations: it is off by default.
A compiled model decodes on the torch packs of :mod:`fastblt.model.packed` (the compiler sees torch
operations only), not on the NumPy path that eager float32 CPU decoding uses.

Inductor needs a C++ compiler on CPU and Triton on CUDA; without them :func:`compile_for_decoding`
warns, says what to install, and leaves the model eager (same results, eager speed).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import torch

from .blt import BLT

COMPONENTS = ("patcher", "local_encoder", "global_transformer", "local_decoder")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` → torch.device. Raises ValueError for another name, or for CUDA
    when this torch build sees no GPU (saying what to do)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but this torch build sees no CUDA device "
                             f"(torch {torch.__version__}, torch.cuda.is_available() is False): install a CUDA "
                             "build of torch on a GPU machine, or use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """A dtype name (float32, bfloat16, float16) or None (bfloat16 on CUDA, float32 on CPU)."""
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def compiler_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot generate code for ``device`` here (None when it can)."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile (PyTorch >= 2.0 needed)"
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "torch.compile on CUDA needs Triton: pip install triton"
        return None
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        return "torch.compile on CPU needs a C++ compiler (g++ or clang++ on PATH, or $CXX): e.g. apt-get install g++"
    return None


def compile_for_decoding(model: BLT, warn=None) -> bool:
    """Compile the forwards of ``model``'s components in place (forward hooks still fire).

    Returns True when compiled; False (after printing why to ``warn``, default stderr) when the
    compiler is missing, leaving the model eager. Numerics are those of the eager model up to
    float reassociation (the cached == uncached tolerance of 1e-4 still holds).
    """
    device = next(model.parameters()).device
    problem = compiler_problem(device)
    if problem is not None:
        print(f"fastblt: --compile ignored, running eager: {problem}", file=warn or sys.stderr)
        return False
    for name in COMPONENTS:
        mod = getattr(model, name, None)
        if mod is not None:
            mod.forward = torch.compile(mod.forward, dynamic=True)
    object.__setattr__(model, "decode_with_numpy", False)  # the compiler sees torch ops only (model/packed.py)
    return True
