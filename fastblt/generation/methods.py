"""The registry of generation methods and their options, readable without importing torch.

A method is ``fn(model, ids, ctx, *, option=default, ...)``: ids is BOS + prompt byte ids
(list[int]); ctx is a :class:`~fastblt.generation.stopping.Context` (emit final ids into
``ctx.out`` until ``ctx.out.done``, draw target bytes with ``ctx.sampler``, count calls in
``ctx.counters``, e.g. by driving a :class:`~fastblt.generation.state.BLTState`). Its keyword-only
parameters are its options, and their defaults are the defaults ``generate`` and the
``fastblt generate`` flags use: nothing repeats them.

Methods are registered as "module:function" paths, imported on first use. Their options are read
from the module's source (:func:`method_options`), so that building ``fastblt generate --help``
does not import torch. Option annotations: ``int`` (a count ≥ 1), ``float`` (a threshold ≥ 0),
``str``, one of the ``Literal`` aliases below (a choice), each optionally ``| None``.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Schedule = Literal["paper", "fused"]  # speculative E+G schedule (speculative.py)
Unmask = Literal["confidence", "entropy", "one-step"]  # BLT-D unmasking rule (Fast BLT §3.1.2)
FirstSlot = Literal["diffusion", "ar"]  # what fills a BLT-D block's slot 0 (blt_d.py)
CHOICES: dict[str, tuple[str, ...]] = {"Schedule": typing.get_args(Schedule), "Unmask": typing.get_args(Unmask),
                                       "FirstSlot": typing.get_args(FirstSlot)}

METHODS: dict[str, str | Callable[..., None]] = {
    "blt": "fastblt.generation.blt:generate_blt",
    "blt-uncached": "fastblt.generation.blt:generate_blt_uncached",
    "blt-s": "fastblt.generation.blt_s:generate_blt_s",
    "blt-d": "fastblt.generation.blt_d:generate_blt_d",
    "blt-dv": "fastblt.generation.blt_dv:generate_blt_dv",
}


@dataclass(frozen=True)
class Option:
    """One keyword-only option of a method: its name, default and value kind.

    kind: int, float or str; choices: the allowed strings of a ``Literal`` option (else None);
    optional: None is allowed (the annotation has ``| None``).
    """

    name: str
    default: Any
    kind: type
    choices: tuple[str, ...] | None = None
    optional: bool = False

    def check(self, value: Any) -> None:
        """Raise ValueError unless ``value`` is valid for this option (module docstring: an int is a
        count ≥ 1, a float a finite threshold ≥ 0, a choice one of its strings; None only if
        optional; other values are left to the method)."""
        if self.choices is None and self.kind not in (int, float):
            return  # a free string, or an option without a known annotation: the method checks it
        if self.choices is not None:
            want, ok = f"one of {self.choices}", isinstance(value, str) and value in self.choices
        elif self.kind is int:
            want, ok = "an integer >= 1", isinstance(value, int) and not isinstance(value, bool) and value >= 1
        else:
            want = "a finite number >= 0"
            try:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
            except OverflowError:  # an int too large for a float (10**400)
                ok = False
        if not (ok or (value is None and self.optional)):
            raise ValueError(f"{self.name} must be {want}{' or None' if self.optional else ''}, got {value!r}")


def register_method(name: str, target: str | Callable[..., None]) -> None:
    """Add a method: ``target`` is a function or a "module:function" path (imported lazily)."""
    METHODS[name] = target


def _target(name: str) -> str | Callable[..., None]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


def method_function(name: str) -> Callable[..., None]:
    """The function of a registered method (imports its module). Raises ValueError for an unknown name."""
    target = _target(name)
    if callable(target):
        return target
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _kind(annotation: Any) -> tuple[type, tuple[str, ...] | None, bool]:
    """(kind, choices, optional) of an annotation given as text ("int | None", "Schedule") or as an object."""
    if isinstance(annotation, str):
        every = [p.strip() for p in annotation.split("|")]
        parts = [p for p in every if p != "None"]
        optional = len(parts) < len(every)
        name = parts[0] if len(parts) == 1 else ""
        if name in CHOICES:
            return str, CHOICES[name], optional
        return {"int": int, "float": float, "str": str}.get(name, str), None, optional
    optional = type(None) in typing.get_args(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if typing.get_origin(annotation) is Literal:
        return str, tuple(typing.get_args(annotation)), optional
    if typing.get_origin(args[0]) is Literal:
        return str, tuple(typing.get_args(args[0])), optional
    return (args[0], None, optional) if args[0] in (int, float, str) else (str, None, optional)


def _options_from_source(module: str, func: str) -> list[Option]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot find the module {module!r} of a registered method")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func), None)
    if fn is None:
        raise ValueError(f"{module} has no function {func!r}")
    return [Option(a.arg, ast.literal_eval(d) if d is not None else None,
                   *_kind(ast.unparse(a.annotation) if a.annotation is not None else "str"))
            for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults)]


def option_specs(name: str) -> list[Option]:
    """The options of a method, in signature order, without importing its module."""
    target = _target(name)
    if isinstance(target, str):
        return _options_from_source(*target.split(":"))
    params = inspect.signature(target).parameters.values()
    return [Option(p.name, None if p.default is p.empty else p.default, *_kind(p.annotation))
            for p in params if p.kind is p.KEYWORD_ONLY]


def method_options(name: str) -> dict[str, Any]:
    """Keyword-only options of a method with their defaults, e.g. {"draft_length": 8, "schedule": "fused"}."""
    return {o.name: o.default for o in option_specs(name)}


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options a call passes to method ``name``: its defaults updated with ``options``.

    Raises ValueError, the same way for every method and option, when ``options`` holds a name the
    method does not take or a value its annotation refuses (:meth:`Option.check`; checked before
    anything runs, so also when nothing is generated).
    """
    specs = {o.name: o for o in option_specs(name)}
    refused = sorted(set(options) - set(specs))
    if refused:
        raise ValueError(f"method {name!r} does not take {refused}; its options: {sorted(specs) or 'none'}")
    for key, value in options.items():
        specs[key].check(value)
    return {**{k: o.default for k, o in specs.items()}, **options}
