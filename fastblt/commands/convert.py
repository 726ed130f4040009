"""``fastblt convert SRC DST --to fastblt|hf|release``: convert a model between the three layouts.

SRC is any folder ``fastblt.load`` reads (ours, transformers' Blt, the released bytelatent layout)
or a named model. DST must not exist yet (or be an empty folder). BLT-D's MASK/BLOCK_PAD input rows
have no place in the hf and release layouts and are dropped there (the result is a plain BLT).
"""
from __future__ import annotations

import argparse
from pathlib import Path

LAYOUTS = ("fastblt", "hf", "release")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="model folder (ours, transformers Blt, or the released layout) or a named model")
    p.add_argument("dst", help="new folder to write")
    p.add_argument("--to", required=True, choices=LAYOUTS,
                   help="fastblt: our format; hf: what transformers' BltForCausalLM.from_pretrained reads; "
                        "release: the bytelatent layout of facebook/blt-1b (config.json args, entropy_model/)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights dtype for fastblt and release output (hf is always float32; default float32)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load, save, save_hf
    from ..named_models import resolve
    from ..release import save_release

    src, dst = resolve(args.src), Path(args.dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(f"{dst} exists and is not an empty folder; choose a new destination")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = load(src, dtype=dtype)
    if model.cfg.diffusion_block_size and args.to != "fastblt":
        print(f"note: {src} is a BLT-D model (block size {model.cfg.diffusion_block_size}); the {args.to} layout "
              "keeps its weights as a plain BLT (blt, blt-s), without the BLT-D block size")
    {"fastblt": lambda: save(model, dst), "hf": lambda: save_hf(model, dst),
     "release": lambda: save_release(model, dst)}[args.to]()
    print(f"wrote {dst} ({args.to} layout) from {src}")
    return 0
