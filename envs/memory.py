"""A tiny memory task: a cue at the first step, the answer asked ``delay`` steps later.

Observation ``(3,)`` float: ``[cue is 0, cue is 1, answer now]``. The cue is shown only at t=0;
then zeros for ``delay`` steps; then the query flag. The action (0 or 1) at the query step earns
+1 when it names the cue, else 0; every other action is ignored. At the query step the
observation is the same whatever the cue, so a memoryless policy scores 0.5 on average and a
policy with memory can score 1.0. Registered as ``rims/CueMemory-v0``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "rims/CueMemory-v0"


class CueMemoryEnv(gym.Env):
    """Recall a binary cue after ``delay`` blank steps (episode length ``delay + 2``)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, delay: int = 4, render_mode: str | None = None) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.delay = delay
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._cue = 0
        self._t = 0

    def situation(self) -> dict[str, str]:
        """The cue to remember, for ``rims mechanisms``."""
        return {"cue": str(self._cue)}

    def _obs(self) -> np.ndarray:
        obs = np.zeros(3, np.float32)
        if self._t == 0:
            obs[self._cue] = 1.0
        elif self._t == self.delay + 1:
            obs[2] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(2))
        self._t = 0
        return self._obs(), {}

    def render(self) -> np.ndarray:
        """The observation as three 32 x 32 cells: cue 0, cue 1 (white when shown), query."""
        cells = np.repeat(np.repeat(self._obs().reshape(1, 3), 32, axis=0), 32, axis=1)
        return np.repeat((cells * 255).astype(np.uint8)[..., None], 3, axis=2)  # (32, 96, 3)

    def step(self, action):
        query = self._t == self.delay + 1
        reward = float(query and int(action) == self._cue)
        self._t += 1
        return self._obs(), reward, query, False, {}


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=CueMemoryEnv)
