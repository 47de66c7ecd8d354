"""Which runs are seeds of one config, and a short name for each config: shared by ``rims plot``
(one curve per config) and ``rims eval --pool-seeds`` (one column per config)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agents.config import NOT_LEARNED, saved_fields

IGNORED = NOT_LEARNED | {"seed"}
"""Settings that do not tell configs apart: runs that differ only in these are its seeds."""


def config_key(config: dict[str, Any]) -> str:
    """The same string for configs that differ only in ``IGNORED`` settings; a config saved
    before a field existed counts as having the value that field's absence means (a run from
    before ``--shift`` pools with unshifted runs from after it)."""
    full = saved_fields(config)
    return json.dumps({k: v for k, v in full.items() if k not in IGNORED}, sort_keys=True)


def config_names(configs: Sequence[dict[str, Any]], with_env: bool = False) -> dict[str, str]:
    """A short name for each distinct config (keyed by ``config_key``): its core, its env where
    ``with_env`` or where the configs' envs differ, and then each setting whose value differs
    between it and another config of that core and env (``rims k=3``, ``rims k=4``), so that
    the name says what the comparison is about."""
    by_key = {config_key(c): saved_fields(c) for c in configs}
    with_env = with_env or len({c.get("env") for c in by_key.values()}) > 1

    def base(config: dict[str, Any]) -> str:
        core = str(config.get("core"))
        return f"{core} on {config.get('env')}" if with_env else core

    names = {}
    for key, config in by_key.items():
        peers = [c for c in by_key.values() if base(c) == base(config)]
        differing = sorted(
            field for field in config
            if field not in IGNORED and len({json.dumps(p.get(field)) for p in peers}) > 1
        )  # fmt: skip
        names[key] = " ".join([base(config), *(setting_text(f, config[f]) for f in differing)])
    return names


def setting_text(field: str, value: Any) -> str:
    """``k=3``; the training shifts as they are given (``size=5,6 noise=0.1``, or
    ``unshifted``), and a schedule's other shifts after ``other`` (``other size=5``)."""
    if field == "shift":
        return " ".join(value) or "unshifted"
    if field == "other_shift":
        return "other " + (" ".join(value) or "unshifted")
    return f"{field}={value}"
