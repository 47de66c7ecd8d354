"""Which RIMs top-k selection switches: shared by the training log (``rims/switched_units``) and
``rims mechanisms``, kept apart from the latter so that training does not import the analysis."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

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
        f"active on over {100 * (1 - SWITCH_MARGIN):.0f}% of its steps (--selection-balance 0.1 "
        "or --centre-features --centre-keep-size keep it switching; rims mechanisms RUN tells "
        "more)"
    )


def balance_loss(mask: Tensor, null_attention: Tensor, k: int) -> Tensor:
    """The Switch Transformer's load-balancing loss (Fedus et al., 2021) for RIMs' top-k
    selection: ``U * sum_u f_u * p_u``. ``f_u`` is RIM u's share of the active slots over the
    steps (``k`` a step; no gradient) and ``p_u`` its mean share of the RIMs' input attention,
    ``(1 - null_u) / sum_v (1 - null_v)`` at each step. It is 1 where every RIM is active
    equally often or every RIM attends equally, and its gradient moves input attention away
    from the RIMs that are active most, so that the others take their turn.

    mask: ``(..., U)`` bool, the active RIMs; null_attention: ``(..., U)``, differentiable.
    """
    U = mask.shape[-1]
    active = mask.reshape(-1, U).to(null_attention.dtype)  # (..., U) -> (steps, U)
    f = active.mean(0) / k  # (U,), sums to 1
    attention = 1 - null_attention.reshape(-1, U)  # (..., U) -> (steps, U)
    share = attention / attention.sum(-1, keepdim=True).clamp_min(torch.finfo(attention.dtype).tiny)
    return U * (f.detach() * share.mean(0)).sum()
