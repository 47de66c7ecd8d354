"""Which RIMs top-k selection switches: shared by the training log (``rims/switched_units``) and
``rims mechanisms``, kept apart from the latter so that training does not import the analysis."""

from __future__ import annotations

from collections.abc import Sequence

SWITCH_MARGIN = 0.05  # a unit on (or off) in over 95% of the steps is not switched


def switched_units(rates: Sequence[float], margin: float = SWITCH_MARGIN) -> list[int]:
    """The units top-k selection switches: active on at least ``margin`` and at most
    ``1 - margin`` of the steps (``rates``: each unit's share of active steps)."""
    return [u for u, x in enumerate(rates) if margin <= x <= 1 - margin]
