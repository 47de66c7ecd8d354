"""The fast Minigrid view equals Minigrid's own, observation for observation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from minigrid.envs import EmptyEnv
from minigrid.minigrid_env import MiniGridEnv

from envs.minigrid import make_minigrid
from envs.minigrid_view import fast_gen_obs, install_fast_view

# Doors (locked, closed, open), keys, boxes, balls, lava, moving obstacles, several rooms,
# grids larger than the view, and BabyAI's room grid.
ENVS = [
    "MiniGrid-DoorKey-5x5-v0",
    "MiniGrid-DoorKey-16x16-v0",
    "MiniGrid-KeyCorridorS3R3-v0",
    "MiniGrid-LavaCrossingS9N1-v0",
    "MiniGrid-MemoryS7-v0",
    "MiniGrid-ObstructedMaze-1Dlhb-v0",
    "MiniGrid-Dynamic-Obstacles-6x6-v0",
    "BabyAI-GoToLocal-v0",
]


def assert_same_views(env: gym.Env, steps: int, seed: int = 1) -> None:
    """Random actions; at every step both views of the same state must be equal."""
    base = env.unwrapped
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    objects = set()  # object types seen besides unseen, empty and wall
    for t in range(steps):
        ours, theirs = fast_gen_obs(base), MiniGridEnv.gen_obs(base)
        assert ours["image"].dtype == np.uint8 and ours["image"].shape == theirs["image"].shape
        assert np.array_equal(ours["image"], theirs["image"]), f"step {t}"
        assert ours["direction"] == theirs["direction"] and ours["mission"] == theirs["mission"]
        objects |= set(np.unique(theirs["image"][..., 0]).tolist()) - {0, 1, 2}
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            env.reset(seed=int(rng.integers(10_000)))
    assert objects  # the views held doors, keys, balls, lava or goals, not only walls


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize("view", [None, 5])
def test_fast_view_equals_minigrids_on_random_rollouts(env_id, view):
    kwargs = {} if view is None else {"agent_view_size": view}
    assert_same_views(gym.make(env_id, **kwargs), steps=300)


def test_fast_view_sees_through_walls_when_the_env_does():
    env = gym.make("MiniGrid-FourRooms-v0")
    env.unwrapped.see_through_walls = True
    assert_same_views(env, steps=200)


def test_make_minigrid_installs_it_and_custom_views_keep_their_own():
    env = make_minigrid("MiniGrid-DoorKey-5x5-v0")
    env.reset(seed=0)  # the first view, checked both ways
    assert env.unwrapped.gen_obs.__func__ is fast_gen_obs

    class CustomView(EmptyEnv):
        def gen_obs(self):
            return {"image": np.zeros((7, 7, 3), np.uint8), "direction": 0, "mission": ""}

    custom = CustomView()
    assert not install_fast_view(custom)
    assert "gen_obs" not in vars(custom)  # the class's own method still runs


def test_a_first_view_that_differs_falls_back_to_minigrids_with_a_warning(monkeypatch):
    """Should a Minigrid release change its view, the env keeps Minigrid's own, not ours."""
    import envs.minigrid_view as view

    def off_by_one(env):
        obs = fast_gen_obs(env)
        return dict(obs, image=obs["image"] + 1)

    monkeypatch.setattr(view, "fast_gen_obs", off_by_one)
    env = make_minigrid("MiniGrid-DoorKey-5x5-v0")
    with pytest.warns(UserWarning, match="differs from Minigrid's"):
        obs, _ = env.reset(seed=0)
    assert "gen_obs" not in vars(env.unwrapped)  # Minigrid's own method from now on
    assert np.array_equal(obs["image"], MiniGridEnv.gen_obs(env.unwrapped)["image"])
