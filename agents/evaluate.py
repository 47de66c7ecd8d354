"""Evaluating a policy: whole episodes in parallel envs, the recurrent state carried through each
episode and reset at its start, seeds disjoint from training's."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.storage import obs_to_tensors
from envs.factory import make_vector_env
from policies.actor_critic import ActorCritic

EVAL_SEED_OFFSET = 1_000_000_007  # training seeds env i with seed + i; evaluation starts far off


@dataclass
class EvalResult:
    """Per-episode returns and lengths, in the order the episodes finished."""

    returns: list[float]
    lengths: list[int]

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))


@torch.no_grad()
def evaluate(
    policy: ActorCritic,
    env_id: str,
    episodes: int,
    seed: int = 0,
    num_envs: int = 8,
    deterministic: bool = False,
    env_kwargs: dict | None = None,
) -> EvalResult:
    """Run ``episodes`` full episodes of ``env_id`` with ``policy`` (sampling unless
    ``deterministic``). Each env runs whole episodes only; the first ``episodes`` to finish
    are kept, so the result does not depend on ``num_envs`` for short episodes."""
    device = next(policy.parameters()).device
    num_envs = min(num_envs, episodes)
    envs = make_vector_env(env_id, num_envs, env_kwargs=env_kwargs)
    policy.eval()
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        obs, _ = envs.reset(seed=seed + EVAL_SEED_OFFSET)
        obs_t = obs_to_tensors(obs, device)
        state = policy.initial_state(num_envs, device)
        starts = torch.ones(num_envs, dtype=torch.bool, device=device)
        returns: list[float] = []
        lengths: list[int] = []
        while len(returns) < episodes:
            act = policy.act(obs_t, state, starts, deterministic=deterministic)
            obs, _, terminated, truncated, info = envs.step(act.actions.cpu().numpy())
            if "episode" in info:
                done = info["_episode"]
                returns.extend(info["episode"]["r"][done].tolist())
                lengths.extend(info["episode"]["l"][done].tolist())
            obs_t = obs_to_tensors(obs, device)
            state = act.state
            starts = torch.as_tensor(terminated | truncated, device=device)
    finally:
        envs.close()
        torch.set_rng_state(generator_state)
    return EvalResult(returns[:episodes], lengths[:episodes])
