"""Generalised advantage estimation (Schulman et al., 2016) with terminations and truncations."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    terminated: Tensor,
    ended: Tensor,
    bootstrap_values: Tensor,
    last_values: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Advantages and returns, both ``(T, B)``.

    rewards, values: ``(T, B)``; ``values[t]`` is V(obs_t).
    terminated: ``(T, B)`` bool, the episode reached a terminal state at step t (no bootstrap).
    ended: ``(T, B)`` bool, terminated or truncated at step t (the episode does not continue).
    bootstrap_values: ``(T, B)``, V(final obs) where the episode was truncated at step t
        (ignored elsewhere): a truncated episode is bootstrapped, not treated as terminal.
    last_values: ``(B,)``, V of the observation after the last step.
    """
    T = rewards.shape[0]
    not_terminated = (~terminated.bool()).to(rewards.dtype)
    continues = (~ended.bool()).to(rewards.dtype)
    # V(s_{t+1}) of the same episode: the next stored value, or the final obs's value at a cut.
    next_values = torch.cat((values[1:], last_values.unsqueeze(0)))  # (T-1,B)+(1,B) -> (T,B)
    next_values = torch.where(ended.bool(), bootstrap_values, next_values)
    deltas = rewards + gamma * not_terminated * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_values)
    for t in reversed(range(T)):
        running = deltas[t] + gamma * gae_lambda * continues[t] * running
        advantages[t] = running
    return advantages, advantages + values
