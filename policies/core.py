"""The one interface every recurrent core implements, and helpers that only use that interface.

A core maps a time-major sequence of features to a time-major sequence of outputs while carrying
a recurrent ``State``. The PPO code, the rollout storage and the sampler only ever call
``initial_state`` and ``forward``; they never look inside a ``State`` beyond "a tuple of tensors
whose dim 0 is the batch".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

State = tuple[Tensor, ...]
"""A core's recurrent state: a tuple of tensors, each with the batch on dim 0."""


@dataclass(frozen=True)
class CoreInfo:
    """What a core reports beside its output. Empty (all ``None``) for LSTM, GRU and feed-forward.

    mask: ``(T, B, num_units)`` bool, the RIMs that were active at each step.
    null_attention: ``(T, B, num_units)`` float, the head-averaged input attention each RIM put on
        the null element (the selection score: the ``k`` smallest are active).
    input_attention: ``(T, B, num_units, N)``, for a set of N > 1 input elements (e.g. CNN
        positions), each RIM's head-averaged attention on each element.
    """

    mask: Tensor | None = None
    null_attention: Tensor | None = None
    input_attention: Tensor | None = None


class RecurrentCore(Protocol):
    """Structural type of a core (``RIMs``, ``LSTMCore``, ``GRUCore``, ``FeedForwardCore``)."""

    output_size: int

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zeros, batch on dim 0."""
        ...

    def __call__(
        self, x: Tensor, state: State, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State, CoreInfo]:
        """x: ``(T, B, D)`` (RIMs also take a set ``(T, B, N, D)``); episode_starts: ``(T, B)``
        bool, True where the state is reset to the initial one *before* that step.
        Returns ``(out (T, B, output_size), final state, info)``."""
        ...


def check_sequence_input(x: Tensor, input_size: int, allow_set: bool) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(T, B, D)`` (or ``(T, B, N, D)``), D = input_size."""
    ndims = (3, 4) if allow_set else (3,)
    if x.dim() not in ndims or x.shape[-1] != input_size:
        shape = "(T, B, D) or (T, B, N, D)" if allow_set else "(T, B, D)"
        raise ValueError(
            f"core input must have shape {shape} with D={input_size}, got {tuple(x.shape)}"
        )


def check_episode_starts(episode_starts: Tensor | None, time: int, batch: int) -> None:
    """Raise ``ValueError`` unless ``episode_starts`` is ``None`` or a ``(T, B)`` tensor."""
    if episode_starts is not None and tuple(episode_starts.shape) != (time, batch):
        raise ValueError(
            f"episode_starts must have shape (T, B)=({time}, {batch}), "
            f"got {tuple(episode_starts.shape)}"
        )


def keep_factor(episode_starts: Tensor, dtype: torch.dtype) -> Tensor:
    """``(T, B)`` bool starts -> ``(T, B)`` float, 0.0 where the state must be reset, else 1.0."""
    return (~episode_starts.bool()).to(dtype)


def check_positive(**sizes: int) -> None:
    """Raise ``ValueError`` naming the first size that is not a positive integer."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}")
