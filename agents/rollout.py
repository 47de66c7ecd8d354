"""Collecting rollouts: the policy acts in the vector env and the storage records it.

The collector owns what carries over from one rollout to the next: the last observation, the
core state and which envs start an episode at the next step. Truncated episodes are bootstrapped
with the value of their final observation, computed from the state that saw the episode through.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from gymnasium.vector import VectorEnv
from torch import Tensor

from agents.storage import RolloutStorage, obs_to_tensors
from envs.factory import final_observations, in_process_limit
from policies.actor_critic import ActorCritic


@dataclass
class RolloutStats:
    """What happened during one rollout."""

    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    active_fraction: list[float] | None = None  # per RIM, share of steps it was active
    last_masks: Tensor | None = None  # (T, B, U) bool, the RIMs' activity over the rollout
    last_input_attention: Tensor | None = None  # (U, N), env 0's last step, for set inputs
    seconds: float = 0.0  # wall time of the rollout: acting, env steps, storage


class RolloutCollector:
    """Steps ``envs`` with ``policy`` and fills ``storage`` one rollout at a time."""

    def __init__(
        self,
        envs: VectorEnv,
        policy: ActorCritic,
        storage: RolloutStorage,
        device: torch.device,
        seed: int,
        clip_rewards: bool = False,
        episodic_life: bool = False,
        env_seconds: float | None = None,
    ) -> None:
        """clip_rewards: store sign(reward) for learning (episode returns stay unclipped).
        episodic_life: where the env reports ``lives``, a lost life ends the value target
        (terminated for GAE) while the episode, and the core's memory, go on.
        env_seconds: where the envs run in this process, a step or reset that takes longer
        raises ``TimeLimitReached`` (``envs.probe.time_limit``; an async env times its
        workers)."""
        self.envs, self.policy, self.storage, self.device = envs, policy, storage, device
        self.clip_rewards, self.episodic_life = clip_rewards, episodic_life
        self.env_seconds = env_seconds
        self.seed = seed
        # The envs are reset by the first collect, where an env that fails is reported as one
        # failing later would be (the trainer stops with a checkpoint and one line).
        self.obs: dict[str, Tensor] | None = None
        self.lives = None
        self.state = policy.initial_state(envs.num_envs, device)
        self.episode_starts = torch.ones(envs.num_envs, dtype=torch.bool, device=device)

    def _reset(self) -> None:
        """Reset the envs with the seed (env i gets seed + i) and keep their observations."""
        with in_process_limit(self.envs, self.env_seconds):
            obs, info = self.envs.reset(seed=self.seed)
        self.lives = info.get("lives")
        self.obs = obs_to_tensors(obs, self.device)

    def collect(
        self, should_stop: Callable[[], bool] = lambda: False
    ) -> tuple[Tensor, RolloutStats] | None:
        """Fill the storage; return V(obs after the last step) ``(B,)`` and the rollout's stats,
        or ``None`` if ``should_stop()`` turned true (the rollout is abandoned)."""
        started = time.perf_counter()
        self.policy.eval()
        stats = RolloutStats()
        storage, B = self.storage, self.envs.num_envs
        if self.obs is None:
            self._reset()
        masks = []
        for t in range(storage.num_steps):
            if should_stop():
                return None
            act = self.policy.act(self.obs, self.state, self.episode_starts)
            storage.record_action(
                t, self.obs, self.episode_starts, self.state, act.actions, act.logprobs, act.values
            )
            actions = act.actions.cpu().numpy()
            with in_process_limit(self.envs, self.env_seconds):
                obs, rewards, terminated, truncated, info = self.envs.step(actions)
            ended = terminated | truncated
            bootstrap = torch.zeros(B, device=self.device)
            cut = truncated & ~terminated
            learn_terminated, learn_ended = terminated, ended
            if self.episodic_life and "lives" in info and self.lives is not None:
                lost = (info["lives"] < self.lives) & ~ended
                learn_terminated, learn_ended = terminated | lost, ended | lost
            self.lives = info.get("lives")
            if self.clip_rewards:
                rewards = np.sign(rewards)
            if cut.any():
                final = obs_to_tensors(final_observations(obs, info, cut), self.device)
                no_start = torch.zeros(B, dtype=torch.bool, device=self.device)
                values = self.policy.value(final, act.state, no_start)
                bootstrap = torch.where(torch.as_tensor(cut, device=self.device), values, 0.0)
            storage.record_outcome(
                t,
                torch.as_tensor(rewards, dtype=torch.float32, device=self.device),
                torch.as_tensor(learn_terminated, device=self.device),
                torch.as_tensor(learn_ended, device=self.device),
                bootstrap,
            )
            if "episode" in info:
                done = info["_episode"]
                stats.episode_returns.extend(info["episode"]["r"][done].tolist())
                stats.episode_lengths.extend(info["episode"]["l"][done].tolist())
            if act.info.mask is not None:
                masks.append(act.info.mask[0])
            if act.info.input_attention is not None:
                stats.last_input_attention = act.info.input_attention[0, 0]  # (1,B,U,N) -> (U,N)
            self.obs = obs_to_tensors(obs, self.device)
            self.state = act.state
            self.episode_starts = torch.as_tensor(ended, device=self.device)
        if masks:
            stacked = torch.stack(masks)  # T x (B, U) -> (T, B, U)
            stats.last_masks = stacked
            stats.active_fraction = stacked.float().mean((0, 1)).tolist()
        last_values = self.policy.value(self.obs, self.state, self.episode_starts)
        stats.seconds = time.perf_counter() - started  # the actions' .cpu() synced every step
        return last_values, stats
