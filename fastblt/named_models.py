"""Named models shipped inside the package: ``fastblt.load("default")`` / ``load("blt")``.

Names resolve against the installed package (``fastblt/assets/``), so they work from any working
directory. A path that exists always wins over a name: ``load("blt")`` in a folder that holds a
``blt/`` model folder loads that folder (write ``fastblt.load(named_path("blt"))`` to be explicit).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"

# name -> (folder under assets/, one-line description)
NAMED_MODELS: dict[str, tuple[str, str]] = {
    "default": ("default_model", "the shipped default model (fastblt demo, generate, serve)"),
    "blt": ("blt_model", "the shipped plain BLT, trained with the next-byte objective"),
}


def named_path(name: str) -> Path:
    """Folder of a named model. Raises ValueError for an unknown name, FileNotFoundError when the
    package was installed without it."""
    if name not in NAMED_MODELS:
        raise ValueError(f"unknown model name {name!r}; named models: {sorted(NAMED_MODELS)}")
    path = ASSETS / NAMED_MODELS[name][0]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the named model {name!r} is not installed at {path}")
    return path


def resolve(model: str | os.PathLike | None) -> Path:
    """A model folder from a path or a name (None → "default"). An existing path wins over a name."""
    if model is None:
        return named_path("default")
    path = Path(model)
    if not path.exists() and str(model) in NAMED_MODELS:
        return named_path(str(model))
    return path


def describe() -> list[dict[str, object]]:
    """One row per named model: name, path, description, and the objective / block size from its config."""
    rows = []
    for name, (folder, text) in NAMED_MODELS.items():
        path = ASSETS / folder
        row: dict[str, object] = {"name": name, "path": str(path), "description": text, "installed": False}
        try:
            cfg = json.loads((path / "config.json").read_text())
            row["installed"] = True
            row["block_size"] = cfg.get("blt", {}).get("diffusion_block_size")
            row["objective"] = cfg.get("training", {}).get("objective")
        except (OSError, ValueError, AttributeError):
            pass
        rows.append(row)
    return rows
