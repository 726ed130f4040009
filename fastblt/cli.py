"""The fastblt command line: one sub-command per job (BLT, BLT-S, BLT-D, BLT-DV: train, generate, bench, demo).

Each sub-command lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen sub-command's module is imported, and it imports torch only
when it runs, so ``fastblt --help`` and every ``fastblt COMMAND --help`` stay fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). Nested groups ("data build") use a space in the name.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("fastblt.commands.info", "print a model's parameter breakdown and the patches of a file"),
    "presets": ("fastblt.commands.presets", "print the parameter breakdown of the named presets next to the paper's"),
    "data build": ("fastblt.data.corpus", "assemble the training corpus from package-shipped sources"),
    "train": ("fastblt.commands.train", "train a BLT or BLT-D model (and its entropy model)"),
    "calibrate": ("fastblt.commands.calibrate", "calibrate an entropy model's patching threshold (mean patch 4, max 8)"),
    "export": ("fastblt.commands.export", "export a trained run as a bf16 model folder with its held-out figures"),
    "generate": ("fastblt.commands.generate", "generate bytes with BLT, BLT-S, BLT-D or BLT-DV"),
    "bench": ("fastblt.commands.bench", "run the paper's tasks and efficiency metrics for every method"),
    "demo": ("fastblt.commands.demo", "the main job: all four systems on real prompts with the shipped model"),
    "convert": ("fastblt.commands.convert", "convert a model between our, the transformers and the released BLT layouts"),
    "models": ("fastblt.commands.models", "list the named models shipped with the package"),
    "serve": ("fastblt.commands.serve", "serve a model over an OpenAI-compatible HTTP API (/v1/completions)"),
}


def chosen_command(argv: list[str]) -> str | None:
    """The COMMANDS name that argv selects ("generate", "data build"), or None."""
    words = [a for a in argv if not a.startswith("-")]
    return next((name for name in COMMANDS if words[:len(name.split())] == name.split()), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser: every sub-command listed; with ``argv``, only the sub-command it selects gets its
    flags (what :func:`main` does, so that --help stays fast), without, every sub-command does."""
    chosen = chosen_command(argv) if argv is not None else None
    parser = argparse.ArgumentParser(prog="fastblt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (module, help_text) in COMMANDS.items():
        parts = name.split()
        target = sub
        if len(parts) == 2:
            if parts[0] not in groups:
                gp = sub.add_parser(parts[0], help=f"{parts[0]} commands")
                groups[parts[0]] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            target = groups[parts[0]]
        p = target.add_parser(parts[-1], help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if argv is not None and name != chosen:
            continue
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:  # a sub-command whose module is not built yet
            if e.name != module:
                raise
            p.set_defaults(_missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command. Returns the exit status: 0, 1 (a user-facing error, no traceback), 2
    (usage), 130 (Ctrl-C, also while starting up) or 141 (the reader of stdout went away, e.g. ``| head``)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("fastblt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # as a program killed by SIGPIPE would: no traceback, and no second error when Python flushes stdout
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"fastblt: '{args.command}' is not available in this build", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # user-facing errors: no traceback
        print(f"fastblt: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
