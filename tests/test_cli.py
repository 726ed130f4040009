"""The `fastblt` command line: every --help builds without importing torch (that is what keeps it
fast), the generate flags come from the methods' signatures, and the old module entry points work."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fastblt.cli import COMMANDS, build_parser, chosen_command
from fastblt.commands.generate import flag, method_option_flags
from fastblt.generation.methods import METHODS, method_function, method_options

NO_TORCH = """
import sys
from fastblt.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "numpy", "safetensors", "transformers") if m in sys.modules)
print("imported:", heavy)
"""


@pytest.mark.parametrize("command", [""] + list(COMMANDS))
def test_help_does_not_import_torch(command):
    argv = command.split() + ["--help"]
    out = subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True, text=True,
                         check=True).stdout
    assert "usage: fastblt" in out
    allowed = ["numpy"] if command == "data build" else []  # the corpus builder's flags module uses numpy
    assert out.strip().endswith(f"imported: {allowed}"), out[-300:]


def test_chosen_command():
    assert chosen_command(["generate", "--method", "blt-s", "hi"]) == "generate"
    assert chosen_command(["data", "build", "--out", "x"]) == "data build"
    assert chosen_command(["--help"]) is None


def test_generate_flags_come_from_method_signatures():
    flags = method_option_flags()
    for method in METHODS:
        import inspect

        sig = inspect.signature(method_function(method))
        real = {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}
        assert method_options(method) == real  # read from source == the imported signature
        for name, default in real.items():
            assert flags[name][1][method] == default
    help_text = build_parser(["generate"])._subparsers._group_actions[0].choices["generate"].format_help()
    for name in flags:
        assert flag(name) in help_text
    assert "blt-dv: one-step" in help_text and "blt-d: confidence" in help_text


@pytest.mark.parametrize("module", ["fastblt.training.calibrate", "fastblt.training.export"])
def test_module_entry_points_still_work(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: fastblt" in out and "--" in out
