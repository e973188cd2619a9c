"""Options declared once, on the dataclass of the component that uses them.

A field made with :func:`option` carries its ``--help`` text (and ``choices``); ``train.py`` turns such
fields into ``--kebab-case`` flags and YAML keys, converts and type-checks values from the field's real
annotation (read with ``typing.get_type_hints``), and a component's own checks raise
:class:`OptionError` naming the field, so every message names the flag at fault.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from typing import Any


class OptionError(ValueError):
    """A bad option value; ``option`` is the field's name (the flag without ``--``, in snake_case)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option
        self.message = message  # without the flag, for a caller whose own flag carries the value

    def __str__(self) -> str:
        return f"--{self.option.replace('_', '-')}: {self.message}"

    def __reduce__(self):  # one process's refusal is raised again on the others (train.output.on_main)
        return type(self), (self.option, self.message)


def option(default: Any, help: str, **metadata) -> Any:
    """A dataclass field that is a command-line option: ``help`` for ``--help``; ``choices``; ``yaml=True``
    for a mapping given as YAML/JSON text. A mutable default (a dict) is copied per instance."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def option_fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """name → (field, resolved annotation) for the option fields of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if "help" in f.metadata}


def value_types(hint: Any) -> tuple[type, ...]:
    """The runtime classes an annotation admits, ``None`` excluded: ``int | None`` → ``(int,)``."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    out = []
    for arg in args:
        if arg is type(None):
            continue
        origin = typing.get_origin(arg) or arg
        out.append(collections.abc.Sequence if origin in (list, tuple, collections.abc.Sequence) else origin)
    return tuple(out)


def scalar_type(hint: Any) -> type:
    """What a flag's text converts to: the first of bool, int, float, dict in the annotation, else str."""
    admitted = value_types(hint)
    return next((t for t in (bool, int, float, dict) if t in admitted), str)


def check_value(name: str, value: Any, hint: Any, f: dataclasses.Field) -> None:
    """OptionError unless ``value`` fits the annotation (an int is a float; a bool is not an int), is finite
    when a number, and is one of the field's ``choices``; ``None`` fits where the annotation allows it."""
    if value is None and type(None) in typing.get_args(hint):
        return
    admitted = value_types(hint)
    if float in admitted:
        admitted += (int,)
    if not isinstance(value, admitted) or (isinstance(value, bool) and bool not in admitted) or \
            (isinstance(value, str) and str not in admitted):
        raise OptionError(name, f"must be {' or '.join(t.__name__ for t in value_types(hint))}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(name, f"must be a finite number, got {value}")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise OptionError(name, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
