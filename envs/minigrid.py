"""Minigrid environments: the egocentric symbolic view plus the agent's direction.

The observation is a dict with ``image`` (uint8 ``(view, view, 3)``: object, colour and state
indices) and ``direction`` (0..3). The mission string is dropped for now: the training families
here (DoorKey, Empty, ...) have one mission each. A text encoder would add a ``mission`` key.
"""

from __future__ import annotations

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* ids)
import numpy as np
from gymnasium import spaces

from envs.minigrid_view import install_fast_view


def is_minigrid(env_id: str) -> bool:
    """True for Minigrid's registered ids (``MiniGrid-*`` and ``BabyAI-*``)."""
    return env_id.startswith(("MiniGrid-", "BabyAI-"))


class SymbolicObservation(gym.ObservationWrapper):
    """Keep ``image`` and ``direction`` of a Minigrid observation; drop ``mission``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        image = env.observation_space["image"]
        self.observation_space = spaces.Dict({"image": image, "direction": spaces.Discrete(4)})

    def observation(self, observation: dict) -> dict[str, np.ndarray]:
        return {"image": observation["image"], "direction": observation["direction"]}


def make_minigrid(env_id: str, **kwargs) -> gym.Env:
    """One Minigrid env with the symbolic observation; Minigrid truncates at its ``max_steps``.
    Its view is computed by ``envs.minigrid_view`` (identical, about 3.7x faster)."""
    env = gym.make(env_id, **kwargs)
    install_fast_view(env.unwrapped)
    return SymbolicObservation(env)
