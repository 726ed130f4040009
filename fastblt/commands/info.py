"""``fastblt info``: a model's parameter breakdown and the entropy patches of a real file."""
from __future__ import annotations

import argparse
from pathlib import Path

from .presets import COMPONENTS, _fmt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model folder (ours or HF format; default: the shipped model)")
    p.add_argument("--file", default=None, help="file whose first bytes to patch (default: this module's source)")
    p.add_argument("--bytes", type=int, default=240, help="how many bytes of the file to patch (default 240)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import DEFAULT_MODEL, load
    from ..config import byte_ids
    from ..model.params import param_breakdown
    from ..patching import patches as P

    args.model = args.model or str(DEFAULT_MODEL)
    model = load(args.model)
    counts = param_breakdown(model)
    print(f"model: {args.model}")
    for comp in COMPONENTS:
        print(f"  {comp:<15} {_fmt(counts[comp]):>10}")
    cfg = model.cfg
    print(f"  patching: {cfg.patching.mode}, threshold {cfg.patching.threshold:.4f} nats, max patch "
          f"{cfg.patching.max_patch_length}; BLT-D block size: {cfg.diffusion_block_size}")
    path = Path(args.file) if args.file else Path(__file__)
    if args.bytes < 1:
        raise ValueError("--bytes must be >= 1")
    if path.is_dir():
        raise ValueError(f"--file {path} is a folder, not a file")
    data = path.read_bytes()[: args.bytes]
    if not data:
        raise ValueError(f"{path} is empty")
    ids = torch.tensor([byte_ids(data)])
    with torch.no_grad():
        starts = model.patch_starts(ids)
    lengths = [x for x in P.patch_lengths(starts)[0].tolist() if x > 0]
    n_p = len(lengths) - 1  # the BOS patch holds no byte of the file
    print(f"\n{path} ({len(data)} bytes) -> {n_p} patches after the BOS patch, mean {len(data) / max(1, n_p):.2f} bytes; "
          "patches shown as |...| (non-printable bytes escaped):")
    out, pos = ["<s>"], 0
    for ln in lengths[1:]:
        chunk = data[pos : pos + ln].decode("utf-8", "backslashreplace")
        out.append("".join(c if c.isprintable() or c in " \n" else repr(c)[1:-1] for c in chunk))
        pos += ln
    print("|" + "|".join(out) + "|")
    return 0
