"""Command-line flags from a typed config dataclass (CleanRL style).

Each field becomes ``--field-name``; its ``help`` metadata becomes the ``--help`` line, its
``choices`` metadata the allowed values. Booleans get ``--flag/--no-flag``; a tuple of strings a
flag given once per value. Optional fields accept ``none``. Flags the user did not give are absent
from the result, so presets can fill them; the help line names every preset that sets the field,
beside the field's own default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field
from typing import Any


def option(
    default: Any, help: str, choices: tuple | None = None, metavar: str | None = None
) -> Any:
    """A dataclass field with a ``--help`` line (and optional choices, and a name for its value
    in the usage line other than the field's)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "metavar": metavar}
    )


def base_type(annotation: Any) -> tuple[type, bool]:
    """``int | None`` -> ``(int, True)``; ``float`` -> ``(float, False)``."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {}, {})  # the dataclass uses postponed annotations
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return annotation, False


def type_mismatch(instance: Any) -> tuple[str, str] | None:
    """The first field of a dataclass instance that does not hold its annotated type, as
    ``("norm_adv", "must be true or false, got 'False'")``; None when all do (None is fine where
    the field is optional, an int where a float is wanted; a float must be finite: no setting
    means anything at inf or nan). Configs built in code or read from JSON skip argparse, and a
    string "False" in a bool field would silently mean True."""
    wanted = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    for f in dataclasses.fields(instance):
        kind, optional = base_type(f.type)
        value = getattr(instance, f.name)
        if value is None and optional:
            continue
        if typing.get_origin(kind) is tuple:  # tuple[str, ...]: a repeatable flag
            if not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
                return f.name, f"must be a list of strings, got {value!r}"
            continue
        if isinstance(value, bool):
            ok = kind is bool
        elif kind is float:
            ok = isinstance(value, (int, float)) and math.isfinite(value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            return f.name, f"must be {wanted.get(kind, kind.__name__)}, got {value!r}"
    return None


def _parser_for(kind: type, optional: bool, name: str):
    def parse(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--{name} takes {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None

    parse.__name__ = kind.__name__
    return parse


def add_flags(
    parser: argparse.ArgumentParser,
    config_cls: type,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    sections: Mapping[str, str] | None = None,
) -> None:
    """Add one flag per field of ``config_cls``; defaults are suppressed (absent if not given).
    ``presets`` maps a preset's name to the fields it sets, for the help lines; ``sections``
    maps the first field of each run of fields to the title ``--help`` shows above them."""
    group: Any = parser
    for f in dataclasses.fields(config_cls):
        if sections and f.name in sections:
            group = parser.add_argument_group(sections[f.name])
        _add_flag(group, f, presets or {})


def _add_flag(
    parser: argparse.ArgumentParser, f: Field, presets: Mapping[str, Mapping[str, Any]]
) -> None:
    flag = "--" + f.name.replace("_", "-")
    kind, optional = base_type(f.type)
    default = f.default if f.default is not MISSING else None
    by_preset = [f"{name} {values[f.name]}" for name, values in presets.items() if f.name in values]
    shown = "; ".join([f"default: {default}", *by_preset])
    help_text = f"{f.metadata.get('help', '')} ({shown})"
    if kind is bool:
        parser.add_argument(
            flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
        )
        return
    if typing.get_origin(kind) is tuple:  # tuple[str, ...]: given once per value
        parser.add_argument(flag, action="append", default=argparse.SUPPRESS,
                            metavar=f.metadata.get("metavar"), help=help_text)  # fmt: skip
        return
    parser.add_argument(
        flag,
        type=_parser_for(kind, optional, f.name.replace("_", "-"))
        if kind is not str or optional
        else None,
        choices=f.metadata.get("choices"),
        default=argparse.SUPPRESS,
        metavar=None if f.metadata.get("choices") else f.metadata.get("metavar") or f.name.upper(),
        help=help_text,
    )


def given_flags(namespace: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The config fields the user set on the command line."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    given = {k: v for k, v in vars(namespace).items() if k in names}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
