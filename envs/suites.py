"""Named evaluation suites: lists of (env id, shifts) rows, from ``suites.json`` or a user file.

A suite file is JSON: ``{"NAME": {"description": "...", "rows": [{"env": ID, "shifts":
["KEY=VALUE", ...]}, ...]}}``. ``rims eval --suite NAME`` takes a built-in name or a file path
(a file holding one suite, or several of which NAME selects with ``FILE:NAME``). An ``env`` of
``"$RUN"`` stands for the evaluated runs' training env. ``atari-modes`` is generated: every mode
and difficulty of the runs' Atari game.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from envs.jsonfile import NotJson, read_json
from envs.shifts import ShiftError, parse_shift, shift_label

BUILTIN = Path(__file__).with_name("suites.json")


@dataclass(frozen=True)
class SuiteRow:
    env: str
    shifts: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return shift_label(self.shifts)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    rows: tuple[SuiteRow, ...]


def _parse_suites(data: object, source: str) -> dict[str, Suite]:
    if not isinstance(data, dict) or not data:
        raise ShiftError(f"{source}: a suite file maps suite names to {{description, rows}}")
    suites = {}
    for name, body in data.items():
        rows = body.get("rows") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not rows:
            raise ShiftError(f"{source}: suite {name!r} needs a non-empty list 'rows'")
        parsed = []
        for row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("env"), str):
                raise ShiftError(f"{source}: suite {name!r}: each row needs an 'env' id, got {row}")
            shifts = row.get("shifts", [])
            if not isinstance(shifts, list):
                raise ShiftError(f"{source}: suite {name!r}: 'shifts' must be a list of KEY=VALUE")
            parsed.append(SuiteRow(row["env"], tuple(parse_shift(s) for s in shifts)))
        suites[name] = Suite(name, str(body.get("description", "")), tuple(parsed))
    return suites


RUN_ENV = "$RUN"
GENERATED = ("atari-modes",)


def resolve_rows(suite: Suite, training_envs: list[str]) -> list[SuiteRow]:
    """The suite's rows with ``$RUN`` replaced by the runs' (single) training env."""
    if not any(row.env == RUN_ENV for row in suite.rows):
        return list(suite.rows)
    if len(set(training_envs)) != 1:
        raise ShiftError(
            f"suite {suite.name} uses the runs' training env, but they differ: "
            f"{', '.join(sorted(set(training_envs)))}"
        )
    return [SuiteRow(training_envs[0] if r.env == RUN_ENV else r.env, r.shifts) for r in suite.rows]


def atari_modes_suite(env_id: str) -> Suite:
    """Every mode x difficulty of an ALE game (Machado et al. 2018; Farebrother et al. 2018)."""
    if not env_id.startswith("ALE/"):
        raise ShiftError(f"suite atari-modes needs Atari runs, got {env_id}")
    from envs.atari import available_flavours

    flavours = available_flavours(env_id)
    rows = tuple(
        SuiteRow(env_id, (("mode", str(m)), ("difficulty", str(d))))
        for m in flavours["mode"]
        for d in flavours["difficulty"]
    )
    return Suite("atari-modes", f"every mode and difficulty of {env_id}", rows)


def suite_rows(spec: str, training_envs: list[str]) -> tuple[Suite, list[SuiteRow]]:
    """Suite ``spec`` (a built-in name, ``atari-modes``, a file or ``FILE:NAME``) and its rows
    for runs trained on ``training_envs`` (``$RUN`` and ``atari-modes`` need them to agree);
    ``ShiftError`` if there is no such suite or the runs' envs do not fit it."""
    if spec in GENERATED:
        if len(set(training_envs)) != 1:
            raise ShiftError(f"suite {spec} needs runs trained on one env")
        suite = atari_modes_suite(training_envs[0])
    else:
        suite = load_suite(spec)
    return suite, resolve_rows(suite, training_envs)


def builtin_suites() -> dict[str, Suite]:
    return _parse_suites(json.loads(BUILTIN.read_text()), BUILTIN.name)


def load_suite(spec: str) -> Suite:
    """A built-in suite name, a suite file, or ``FILE:NAME``; ``ShiftError`` if not found."""
    builtins = builtin_suites()
    if spec in builtins:
        return builtins[spec]
    path, _, name = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    if not Path(path).is_file():
        raise ShiftError(
            f"unknown suite {spec!r}; built-in suites: {', '.join(builtins)} (or a JSON file)"
        )
    try:
        suites = _parse_suites(read_json(path), path)
    except OSError as err:
        raise ShiftError(f"{path}: cannot read it ({err.strerror})") from None
    except NotJson as err:  # a PNG given for the JSON, say
        raise ShiftError(f"{path} is not valid JSON ({err})") from None
    if name:
        if name not in suites:
            raise ShiftError(f"{path} has no suite {name!r}; it has {', '.join(suites)}")
        return suites[name]
    if len(suites) > 1:
        raise ShiftError(f"{path} holds several suites ({', '.join(suites)}); use {path}:NAME")
    return next(iter(suites.values()))
