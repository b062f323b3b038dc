"""Command-line options generated from the library's dataclasses, so every default lives in one place.

Each field becomes ``--field-name``; its ``metadata`` may hold ``help``, ``choices``, ``min``/``max`` (inclusive),
``above`` (exclusive lower bound), ``below`` (exclusive upper bound) and ``multiple_of``. Values are range-checked
while parsing, so a bad number stops the command before any work with one ``error:`` line naming the option.
Options left out on the command line do not appear in the namespace (``argparse.SUPPRESS``): the library's own
default (and a preset's override of it) then applies, and ``--help`` shows that default.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..validation import out_of_range


def _base_type(annotation) -> Any:
    """``Optional[int]`` -> ``int``; ``int | None`` -> ``int``; anything else unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and type(None) in typing.get_args(annotation):
        return args[0]
    return annotation


def checked(kind: type, metadata: Mapping[str, Any], flag: str) -> Callable[[str], Any]:
    """An argparse ``type`` that parses ``kind`` and enforces the field's range metadata."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes {'an integer' if kind is int else 'a number'}, got {text!r}")
        problem = out_of_range(value, metadata)
        if problem:
            raise argparse.ArgumentTypeError(f"{flag} {problem}")
        return value

    return parse


def _default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _describe_default(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_dataclass_options(
    parser,
    cls,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    required: Iterable[str] = (),
    defaults: Mapping[str, str] | None = None,
    aliases: Mapping[str, Iterable[str]] | None = None,
    help_overrides: Mapping[str, str] | None = None,
) -> list[str]:
    """Add one option per field of dataclass ``cls`` to ``parser`` (or an argument group); returns the field names.

    ``defaults`` describes a default in words where the field's value is decided later (``{"epochs": "32, or the
    preset's"}``); ``aliases`` are extra, hidden spellings of an option (names of earlier releases).
    """
    hints = typing.get_type_hints(cls)
    exclude, required = set(exclude), set(required)
    chosen = list(only) if only is not None else None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = chosen if chosen is not None else [n for n in fields if n not in exclude]
    added = []
    for name in names:
        field = fields[name]
        meta = dict(field.metadata)
        kind = _base_type(hints[name])
        flag = "--" + name.replace("_", "-")
        default = _default_of(field)
        help_text = (help_overrides or {}).get(name, meta.get("help", "")).replace("%", "%%")  # argparse formats help
        shown = (defaults or {}).get(name, None)
        extra = [a for a in (aliases or {}).get(name, ())]
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if name in required:
            kwargs["required"] = True
        if kind is bool:
            if default is True:
                flags = ["--no-" + name.replace("_", "-")]
                kwargs.update(action="store_false", help=f"{help_text} (default: on; this turns it off)")
            else:
                flags = [flag]
                kwargs.update(action="store_true", help=f"{help_text} (default: off)")
            parser.add_argument(*flags, **kwargs)
        elif kind in (int, float, str):
            if kind is str:
                kwargs["type"] = str
            else:
                kwargs["type"] = checked(kind, meta, flag)
            if meta.get("choices"):
                kwargs["choices"] = list(meta["choices"])
            if name not in required and "(default" not in help_text:
                described = shown if shown is not None else _describe_default(default)
                help_text = f"{help_text} (default: {described})"
            kwargs["help"] = help_text
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
            parser.add_argument(flag, **kwargs)
        else:
            continue  # lists and mappings have their own options
        for alias in extra:
            hidden = dict(kwargs, help=argparse.SUPPRESS)
            hidden.pop("required", None)
            parser.add_argument(alias, **hidden)
        added.append(name)
    return added


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The values of ``names`` that the command line set (options left out are absent)."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def default_of(function: Callable, name: str):
    """The default of keyword ``name`` in ``function``'s signature: the one place that default lives."""
    import inspect

    return inspect.signature(function).parameters[name].default


def add_keyword_options(parser, function: Callable, specs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Options for keywords of ``function``: ``specs`` maps a keyword to its help and range metadata; the default
    shown and used is the function's own (options left out are not passed)."""
    for name, meta in specs.items():
        flag = "--" + name.replace("_", "-")
        default = default_of(function, name)
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if isinstance(default, bool):
            kwargs.update(action="store_true", help=f"{meta.get('help', '')} (default: {_describe_default(default)})")
        else:
            kind = meta.get("type", type(default) if default is not None else str)
            kwargs.update(type=checked(kind, meta, flag) if kind in (int, float) else kind)
            kwargs["help"] = f"{meta.get('help', '')} (default: {meta.get('default_text', _describe_default(default))})"
        parser.add_argument(flag, **kwargs)
    return list(specs)
