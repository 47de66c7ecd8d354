"""Recurrent cores solve a task that needs memory; a memoryless policy cannot."""

from __future__ import annotations

import pytest

from agents.checkpoint import load_policy
from agents.config import resolve_config
from agents.evaluate import evaluate
from agents.trainer import train
from envs.memory import ENV_ID


def train_on_cue_memory(core: str, run_dir, steps: int = 8000):
    config = resolve_config(
        dict(
            env=ENV_ID, core=core, total_steps=steps, learning_rate=3e-3, ent_coef=0.01,
            run_dir=str(run_dir), progress=False, hidden_size=8, num_units=4, k=2,
            feature_size=32, input_key_size=16, num_envs=8, num_steps=32, num_minibatches=2,
        )
    )  # fmt: skip
    train(config)
    policy = load_policy(run_dir).policy
    return evaluate(policy, ENV_ID, episodes=200, seed=0, deterministic=True)


@pytest.mark.parametrize("core", ["rims", "lstm", "gru"])
def test_recurrent_cores_remember_the_cue(core, tmp_path):
    result = train_on_cue_memory(core, tmp_path)
    assert len(result.returns) == 200
    assert result.mean_return >= 0.9


def test_memoryless_policy_cannot(tmp_path):
    # The query observation is the same for both cues: any memoryless policy scores 0.5 in
    # expectation; 200 episodes put 0.65 four standard deviations away.
    result = train_on_cue_memory("ff", tmp_path)
    assert result.mean_return <= 0.65
