"""``StepGrads``: what one step of the hand-written backward hands on (its named record).

Its own module so that both backward steps, ``policies.rims_grad.step_backward`` and
``policies.triton_steps.step_backward``, return it without importing each other.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class StepGrads(NamedTuple):
    """What one step of the reverse walk hands on: the gradients reaching the state before the
    step, ``dh`` and ``dc`` ``(U, B, H)`` (``dc`` None for GRU; ``dh`` before the step's
    episode-start reset, which the step before applies; from a compiled or a Triton step,
    ``dh`` without the state-gradient matmul's product ``dh_product`` ``(U, B, H)``, which the
    step before adds; else ``dh_product`` is None), and the step's factors of the weight
    gradients, joined after the loop: ``d_qkv`` ``(U, B, 3-part)``, ``d_o`` ``(U, B, H or
    2H)`` (the communication output map's pre-activation, with the gate's beside it), ``d_gx``
    ``(U, B, G)`` (0 where a RIM was inactive), ``d_scores`` ``(U, B, heads, N)``, ``d_hq``
    ``(U, B, G+Q)`` and, off the fused input path, ``d_read_in`` ``(U, B, heads, dv)`` (the
    gradient of what each RIM read from the values; else None)."""

    dh: Tensor
    dh_product: Tensor | None
    dc: Tensor | None
    d_qkv: Tensor
    d_o: Tensor
    d_gx: Tensor
    d_scores: Tensor
    d_hq: Tensor
    d_read_in: Tensor | None = None
