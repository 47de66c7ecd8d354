"""Atari: both env paths, their agreement, flavours, reward clipping and lives, CPU training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.config import resolve_config
from agents.rollout import RolloutCollector
from agents.storage import RolloutStorage
from envs.atari import AtariSettings, make_atari_vector_env
from envs.factory import make_env, make_vector_env
from envs.shifts import ShiftError
from policies.actor_critic import ActorCritic, PolicySpec
from tests.test_cli import exit_code
from train import main

BREAKOUT, PONG = "ALE/Breakout-v5", "ALE/Pong-v5"


@pytest.mark.parametrize("path", ["fast", "flavoured"])
def test_observation_contract_on_both_paths(path):
    envs = make_atari_vector_env(BREAKOUT, 2, AtariSettings(frame_stack=4), path=path)
    obs, info = envs.reset(seed=0)
    assert set(obs) == {"image"} and obs["image"].shape == (2, 4, 84, 84)
    assert obs["image"].dtype == np.uint8
    assert envs.single_observation_space["image"].shape == (4, 84, 84)
    assert envs.single_action_space.n == 4 and "lives" in info
    obs, rewards, terminated, truncated, info = envs.step(np.array([1, 3]))
    assert obs["image"].shape == (2, 4, 84, 84) and rewards.shape == (2,)
    envs.close()


def test_fast_and_flavoured_paths_agree():
    """With noops and sticky actions off (the only randomness), the C++ vector env and the
    Gymnasium wrapper stack give identical frames, rewards and episode ends."""
    settings = AtariSettings(frame_stack=2, noop_max=0, repeat_action_probability=0.0)
    fast = make_atari_vector_env(PONG, 2, settings, path="fast")
    slow = make_atari_vector_env(PONG, 2, settings, path="flavoured")
    a, _ = fast.reset(seed=0)
    b, _ = slow.reset(seed=0)
    assert np.array_equal(a["image"], b["image"])
    rng = np.random.default_rng(0)
    for _ in range(150):
        actions = rng.integers(6, size=2)
        a, ra, ta, tra, _ = fast.step(actions)
        b, rb, tb, trb, _ = slow.step(actions)
        assert np.array_equal(a["image"], b["image"])
        assert np.array_equal(ra, rb) and np.array_equal(ta, tb) and np.array_equal(tra, trb)
    fast.close()
    slow.close()


def test_flavoured_env_with_mode_and_difficulty():
    env = make_env(BREAKOUT, shifts=[("mode", "4"), ("difficulty", "1")], frame_stack=1)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (1, 84, 84)
    assert env.unwrapped._game_mode == 4 and env.unwrapped._game_difficulty == 1
    env.step(1)
    envs = make_vector_env(BREAKOUT, 2, shifts=[("mode", "4")])
    assert envs.reset(seed=0)[0]["image"].shape == (2, 1, 84, 84)
    envs.close()
    with pytest.raises(ShiftError, match="has no mode 3; its modes: \\[0, 4"):
        make_env(BREAKOUT, shifts=[("mode", "3")])
    with pytest.raises(ShiftError, match="sticky takes a probability"):
        make_env(BREAKOUT, shifts=[("sticky", "2")])


def test_clipped_rewards_and_lives_as_value_cuts():
    envs = make_vector_env(BREAKOUT, 2, env_kwargs={"frame_stack": 1})
    spec = PolicySpec(core="lstm", hidden_size=8, num_units=2, feature_size=32)
    policy = ActorCritic(envs.single_observation_space, 4, spec)
    storage = RolloutStorage(120, 2, envs.single_observation_space, policy.initial_state(2), 120,
                             torch.device("cpu"))  # fmt: skip
    collector = RolloutCollector(envs, policy, storage, torch.device("cpu"), seed=1,
                                 clip_rewards=True, episodic_life=True)  # fmt: skip
    _, stats = collector.collect()
    envs.close()
    assert set(storage.rewards.unique().tolist()) <= {-1.0, 0.0, 1.0}
    cuts = storage.terminated & ~storage.episode_starts.roll(-1, dims=0)
    assert cuts[:-1].any()  # a lost life: the value target ends, the next step is no new episode
    assert storage.ended[storage.terminated].all()


def test_atari_preset_and_spatial_validation():
    config = resolve_config({"env": BREAKOUT})
    assert (config.clip_coef, config.learning_rate, config.num_envs) == (0.1, 2.5e-4, 8)
    assert config.clip_rewards and config.episodic_life and config.feature_size == 512
    assert config.env_kwargs() == {
        "frame_stack": 1,
        "repeat_action_probability": 0.25,
        "full_action_space": False,
        "max_episode_frames": 108_000,
    }
    assert resolve_config({"env": BREAKOUT, "clip_coef": 0.2}).clip_coef == 0.2
    assert exit_code(["train", "--env", BREAKOUT, "--core", "lstm", "--rims-spatial"]) == 2


ATARI_TINY = [
    "--env", BREAKOUT, "--total-steps", "64", "--num-envs", "2", "--num-steps", "16",
    "--num-minibatches", "1", "--update-epochs", "1", "--hidden-size", "8", "--num-units", "3",
    "--k", "2", "--feature-size", "64", "--no-progress", "--frame-stack", "2",
    "--max-episode-frames", "800",  # an untrained agent may never press FIRE again
]  # fmt: skip


@pytest.mark.parametrize(
    "extra", [["--core", "rims"], ["--core", "lstm"], ["--core", "rims", "--rims-spatial"],
              ["--core", "gru", "--encoder", "impala"]]
)  # fmt: skip
def test_cpu_smoke_training_and_evaluation(tmp_path, extra, capsys):
    run = tmp_path / "run"
    assert main(["train", *ATARI_TINY, *extra, "--run-dir", str(run)]) == 0
    assert "trained to step 64" in capsys.readouterr().out
    assert main(["eval", str(run), "--episodes", "1", "--shift", "sticky=0"]) == 0
    assert "sticky=0" in capsys.readouterr().out
