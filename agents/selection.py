"""Which RIMs top-k selection switches: shared by the training log (``rims/switched_units``) and
``rims mechanisms``, kept apart from the latter so that training does not import the analysis."""

from __future__ import annotations

from collections.abc import Sequence

SWITCH_MARGIN = 0.05  # a unit on (or off) in over 95% of the steps is not switched


def switched_units(rates: Sequence[float], margin: float = SWITCH_MARGIN) -> list[int]:
    """The units top-k selection switches: active on at least ``margin`` and at most
    ``1 - margin`` of the steps (``rates``: each unit's share of active steps)."""
    return [u for u, x in enumerate(rates) if margin <= x <= 1 - margin]


def selection_line(switched: int, units: int, k: int) -> str | None:
    """What ``rims train`` says of the last rollout's selection: how many of ``units`` RIMs it
    switched, and where none, that it was a fixed set of ``k``; None where ``k == units`` (every
    RIM is always active: there is no selection)."""
    if k >= units:
        return None
    share = f"{100 * SWITCH_MARGIN:.0f}-{100 * (1 - SWITCH_MARGIN):.0f}%"
    if switched:
        return (f"RIMs selection switched {switched} of {units} units in the last rollout "
                f"(each active on {share} of its steps)")  # fmt: skip
    return (
        f"RIMs selection switched none of {units} units in the last rollout: the same {k} were "
        f"active on over {100 * (1 - SWITCH_MARGIN):.0f}% of its steps (--centre-features "
        "--centre-keep-size keeps selection switching; rims mechanisms RUN tells more)"
    )
