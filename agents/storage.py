"""Time-major rollout storage on the training device, for any core's state.

Besides the usual per-step tensors it keeps the core's state at the start of every training
sequence (every ``sequence_length`` steps), *before* that step's episode-start reset: the core
applies the same reset when the sequence is replayed, so learning sees exactly what acting saw.
States are tuples of tensors with the batch on dim 0; the storage never looks further inside.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from policies.core import State


def torch_dtype(space: spaces.Space) -> torch.dtype:
    """The torch dtype that holds samples of ``space`` (uint8 images stay uint8)."""
    if isinstance(space, spaces.Discrete):
        return torch.int64
    return torch.from_numpy(np.zeros((), dtype=space.dtype)).dtype


def obs_to_tensors(obs: dict[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """Batched numpy dict observation -> dict of tensors on ``device`` (dtypes kept)."""
    return {key: torch.as_tensor(value).to(device, non_blocking=True) for key, value in obs.items()}


class RolloutStorage:
    """``num_steps x num_envs`` transitions; see the module docstring for the stored states."""

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        observation_space: spaces.Dict,
        state_template: State,
        sequence_length: int,
        device: torch.device,
    ) -> None:
        if num_steps % sequence_length:
            raise ValueError(f"num_steps={num_steps} is not a multiple of {sequence_length}")
        T, B = num_steps, num_envs
        self.num_steps, self.num_envs, self.sequence_length = T, B, sequence_length
        self.obs = {
            key: torch.zeros((T, B, *space.shape), dtype=torch_dtype(space), device=device)
            for key, space in observation_space.spaces.items()
        }
        self.episode_starts = torch.zeros(T, B, dtype=torch.bool, device=device)
        self.actions = torch.zeros(T, B, dtype=torch.int64, device=device)
        self.logprobs = torch.zeros(T, B, device=device)
        self.values = torch.zeros(T, B, device=device)
        self.rewards = torch.zeros(T, B, device=device)
        self.terminated = torch.zeros(T, B, dtype=torch.bool, device=device)
        self.ended = torch.zeros(T, B, dtype=torch.bool, device=device)
        self.bootstrap_values = torch.zeros(T, B, device=device)
        chunks = T // sequence_length
        # (chunks, B, ...) per state tensor: the state entering step c * sequence_length.
        self.start_states = tuple(
            torch.zeros((chunks, *s.shape), dtype=s.dtype, device=device) for s in state_template
        )

    def record_action(
        self,
        t: int,
        obs: dict[str, Tensor],
        episode_starts: Tensor,
        state: State,
        actions: Tensor,
        logprobs: Tensor,
        values: Tensor,
    ) -> None:
        """Step t's input (obs ``(B, ...)``, starts ``(B,)``, state entering it) and the action."""
        for key, value in obs.items():
            self.obs[key][t] = value
        self.episode_starts[t] = episode_starts
        if t % self.sequence_length == 0:
            for store, s in zip(self.start_states, state):
                store[t // self.sequence_length] = s
        self.actions[t] = actions
        self.logprobs[t] = logprobs
        self.values[t] = values

    def record_outcome(
        self,
        t: int,
        rewards: Tensor,
        terminated: Tensor,
        ended: Tensor,
        bootstrap_values: Tensor,
    ) -> None:
        """Step t's reward, terminated / ended flags and truncation bootstrap values, ``(B,)``."""
        self.rewards[t] = rewards
        self.terminated[t] = terminated
        self.ended[t] = ended
        self.bootstrap_values[t] = bootstrap_values
