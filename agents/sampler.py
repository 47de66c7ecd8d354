"""Minibatches of whole sequences with their start states, for recurrent PPO.

A rollout ``(T, B)`` is cut into ``T / L`` chunks per env (``L`` = sequence length; ``L = T``
means whole env columns). Each chunk is one sequence: ``L`` consecutive steps of one env, with
the core state stored when acting reached its first step. A minibatch is a random group of
sequences stacked on the batch dim, so no sequence ever crosses from one env into another.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from agents.storage import RolloutStorage
from policies.core import State


@dataclass
class SequenceBatch:
    """``n`` sequences of length ``L``: tensors ``(L, n, ...)``, ``initial_state`` ``(n, ...)``.

    ``sequence_ids`` ``(n,)`` names each sequence as ``chunk * num_envs + env``."""

    obs: dict[str, Tensor]
    episode_starts: Tensor
    initial_state: State
    actions: Tensor
    old_logprobs: Tensor
    old_values: Tensor
    advantages: Tensor
    returns: Tensor
    sequence_ids: Tensor


def _to_sequences(x: Tensor, length: int) -> Tensor:
    """``(T, B, ...)`` -> ``(L, (T/L)*B, ...)``; sequence ``c*B + b`` is env b's chunk c."""
    T, B = x.shape[:2]
    if length == T:
        return x
    chunks = x.view(T // length, length, B, *x.shape[2:])  # (T,B,...) -> (C,L,B,...)
    return chunks.transpose(0, 1).reshape(length, -1, *x.shape[2:])  # -> (L, C*B, ...)


def sequence_minibatches(
    storage: RolloutStorage,
    advantages: Tensor,
    returns: Tensor,
    num_minibatches: int,
    generator: torch.Generator | None = None,
) -> Iterator[SequenceBatch]:
    """Yield ``num_minibatches`` minibatches covering every sequence once, in random order."""
    L = storage.sequence_length
    seq = {
        "episode_starts": _to_sequences(storage.episode_starts, L),
        "actions": _to_sequences(storage.actions, L),
        "old_logprobs": _to_sequences(storage.logprobs, L),
        "old_values": _to_sequences(storage.values, L),
        "advantages": _to_sequences(advantages, L),
        "returns": _to_sequences(returns, L),
    }
    obs = {key: _to_sequences(value, L) for key, value in storage.obs.items()}
    # (C, B, ...) -> (C*B, ...): start state of sequence c*B + b
    states = tuple(s.flatten(0, 1) for s in storage.start_states)
    count = seq["actions"].shape[1]
    order = torch.randperm(count, generator=generator).to(storage.actions.device)
    for ids in order.chunk(num_minibatches):
        yield SequenceBatch(
            obs={key: value[:, ids] for key, value in obs.items()},
            initial_state=tuple(s[ids] for s in states),
            sequence_ids=ids,
            **{key: value[:, ids] for key, value in seq.items()},
        )
