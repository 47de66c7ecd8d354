"""RIMs inside sb3-contrib's RecurrentPPO: learn, predict with state, evaluate, save and load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

sb3_contrib = pytest.importorskip("sb3_contrib")  # the [sb3] extra; installed with [dev]

from minigrid.wrappers import ImgObsWrapper  # noqa: E402
from sb3_contrib import RecurrentPPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

from policies.sb3 import RIMsAsLSTM, RIMsPolicy  # noqa: E402

RIMS = {"num_units": 4, "k": 2, "hidden_size": 8}


@pytest.fixture(autouse=True)
def sb3_logs_in_tmp(tmp_path, monkeypatch):
    """SB3 makes a log folder per learn() call, by default in the system temp dir."""
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3_logs"))


def small_model(env, cell="lstm", **kwargs):
    return RecurrentPPO(
        RIMsPolicy, env, n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu",
        policy_kwargs={"rims_kwargs": {**RIMS, "cell": cell}}, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_learns_on_cartpole_with_rims_inside(cell):
    model = small_model("CartPole-v1", cell)
    assert isinstance(model.policy.lstm_actor, RIMsAsLSTM)
    assert isinstance(model.policy.lstm_critic, RIMsAsLSTM)
    assert not any(isinstance(m, torch.nn.LSTM) for m in model.policy.modules())
    before = [p.detach().clone() for p in model.policy.lstm_actor.parameters()]
    model.learn(256)
    after = list(model.policy.lstm_actor.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the RIMs were trained
    # The optimizer holds exactly the policy's parameters (the replaced LSTMs' are gone).
    held = {id(p) for g in model.policy.optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.policy.parameters()}


def test_learns_on_minigrid_and_keeps_rims_invariants():
    env = make_vec_env("MiniGrid-DoorKey-5x5-v0", n_envs=2, seed=0, wrapper_class=ImgObsWrapper)
    model = small_model(env)
    model.learn(128)
    obs = env.reset()
    state, starts = None, np.ones(2, dtype=bool)
    for _ in range(5):
        actions, state = model.predict(obs, state=state, episode_start=starts)
        mask = model.policy.lstm_actor.last_mask  # (1, 2, num_units)
        assert mask.shape == (1, 2, 4) and (mask.sum(-1) == RIMS["k"]).all()
        obs, _, dones, _ = env.step(actions)
        starts = dones
    assert state[0].shape == (1, 2, 32) and state[1].shape == (1, 2, 32)


def test_predict_with_state_evaluate_and_save_load_round_trip(tmp_path):
    model = small_model("CartPole-v1")
    model.learn(64)
    mean, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=2)
    assert mean > 0
    path = tmp_path / "rims_ppo.zip"
    model.save(path)
    loaded = RecurrentPPO.load(path, device="cpu")
    assert isinstance(loaded.policy, RIMsPolicy) and loaded.policy.rims_kwargs["k"] == 2
    obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    state, starts = None, np.ones(3, dtype=bool)
    state_b = None
    for _ in range(4):
        a, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        b, state_b = loaded.predict(obs, state=state_b, episode_start=starts,
                                    deterministic=True)  # fmt: skip
        assert np.array_equal(a, b)
        np.testing.assert_array_equal(state[0], state_b[0])
        starts = np.zeros(3, dtype=bool)
