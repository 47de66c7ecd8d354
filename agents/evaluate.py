"""Evaluating a policy: whole episodes in parallel envs, the recurrent state carried through each
episode and reset at its start, seeds disjoint from training's, deterministic for a seed.

Each env runs a fixed quota of episodes (episodes are split evenly over the envs), so short
episodes are not over-represented the way "the first N episodes to finish" would make them. A
mixture (``size=5,6,7``) is evaluated stratified: its episodes are split evenly over its members,
so a row's mean is the mean over the members without the noise of drawing them at random.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from agents.storage import obs_to_tensors
from envs.factory import CALL_SECONDS, env_errors, env_family, make_vector_env
from envs.mixture import combinations
from policies.actor_critic import ActorCritic, ActResult

EVAL_SEED_OFFSET = 1_000_000_007  # training seeds env i with seed + i; evaluation starts far off


@dataclass
class EvalResult:
    """Per-episode returns and lengths; successes where the env defines success; which
    episodes were truncated (cut by the env's step limit, not ended by the task) where known."""

    returns: list[float]
    lengths: list[int]
    successes: list[bool] | None = None
    truncated: list[bool] | None = None

    @classmethod
    def of(
        cls, env_id: str, returns: list[float], lengths: list[int],
        truncated: list[bool] | None = None,
    ) -> EvalResult:  # fmt: skip
        """The episodes' returns and lengths, with successes where ``env_id`` defines them."""
        success = [success_of(env_id, r) for r in returns]
        successes = None if None in success else [bool(s) for s in success]
        return cls(returns, lengths, successes, truncated)

    @classmethod
    def joined(cls, parts: Sequence[EvalResult]) -> EvalResult:
        """The episodes of ``parts``, one after another."""

        def join(lists: list[list[bool] | None]) -> list[bool] | None:
            if any(part is None for part in lists):
                return None
            return [x for part in lists if part is not None for x in part]

        return cls(
            [r for p in parts for r in p.returns],
            [n for p in parts for n in p.lengths],
            join([p.successes for p in parts]),
            join([p.truncated for p in parts]),
        )

    @property
    def episodes(self) -> int:
        return len(self.returns)

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def ci95(self) -> float | None:
        """Half-width of a 95% confidence interval of the mean (normal approximation); None
        for a single episode, whose spread is unknown (not zero)."""
        n = len(self.returns)
        return None if n < 2 else float(1.96 * np.std(self.returns, ddof=1) / math.sqrt(n))

    @property
    def success_rate(self) -> float | None:
        return None if self.successes is None else float(np.mean(self.successes))

    @property
    def truncated_rate(self) -> float | None:
        """The share of episodes cut by the env's step limit; None where not recorded."""
        return None if self.truncated is None else float(np.mean(self.truncated))

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.lengths))


class StepObserver(Protocol):
    """Sees every step of an evaluation (``agents.mechanisms`` records the RIMs' activity)."""

    def start(self, num_envs: int, shifts: Sequence[tuple[str, str]]) -> None:
        """``num_envs`` envs with ``shifts`` were reset to start their first episodes (again for
        each member of a mixture, with its shifts: episodes left unfinished are not
        continued)."""

    def before_step(self, envs: VectorEnv, act: ActResult, info: dict[str, Any]) -> None:
        """``act`` was chosen for the envs' current observations; ``envs.step`` comes next.
        ``info``: the vector info that came with those observations (from the reset or the
        last step; e.g. ALE's ``lives``, one entry per env)."""

    def episode_end(self, env_index: int, counted: bool, outcome: str) -> None:
        """Env ``env_index``'s episode ended with the last step; ``counted``: it is one of the
        evaluation's episodes (not one past its env's quota); ``outcome``: how it ended
        (``outcome_of``)."""


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts that differ by at most one, the larger first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def success_of(env_id: str, episode_return: float) -> bool | None:
    """Minigrid pays a positive reward only for reaching the goal; other envs define none."""
    return episode_return > 0 if env_family(env_id) == "minigrid" else None


def outcome_of(env_id: str, episode_return: float, cut: bool) -> str:
    """How an episode ended: ``cut`` by the env's step limit, else ``success`` or ``failure``
    where the env defines success, ``ended`` where it does not."""
    if cut:
        return "cut"
    success = success_of(env_id, episode_return)
    return "ended" if success is None else "success" if success else "failure"


@torch.no_grad()
def evaluate(
    policy: ActorCritic,
    env_id: str,
    episodes: int,
    seed: int = 0,
    num_envs: int = 16,
    deterministic: bool = False,
    shifts: Sequence[tuple[str, str]] = (),
    env_kwargs: dict | None = None,
    observer: StepObserver | None = None,
    single_envs: bool = False,
    keep_batch: bool = False,
) -> EvalResult:
    """Run ``episodes`` episodes of ``env_id`` (with ``shifts``) with ``policy``, sampling its
    actions unless ``deterministic``. The torch RNGs (the CPU's and the policy's device's) are
    seeded from ``seed`` and restored after, as is the policy's train/eval mode, so that an
    evaluation during training leaves the training as it was. A mixture's episodes are split
    evenly over its members (the first members get one more where they do not divide), each
    member evaluated with the same seed. ``observer`` sees every step; ``single_envs``: Atari
    plays in single Gymnasium envs whose state an observer can read (the flavoured path, whose
    observations are the fast path's), not in ALE's C++ vector env. ``keep_batch``: play
    ``num_envs`` envs even where fewer episodes are asked (the extra envs' episodes are not
    counted), so that a policy whose steps are compiled or captured for the training batch is
    not compiled again for a smaller one (a mixture's members, a rank's share)."""
    members = combinations(shifts)
    if len(members) > 1:
        counts = split_evenly(episodes, len(members))
        return EvalResult.joined([
            evaluate(policy, env_id, count, seed, num_envs, deterministic, member, env_kwargs,
                     observer, single_envs, keep_batch)
            for member, count in zip(members, counts) if count > 0
        ])  # fmt: skip
    device = next(policy.parameters()).device
    num_envs = max(1, num_envs if keep_batch else min(num_envs, episodes))
    quota = np.array(split_evenly(episodes, num_envs))
    done_count = np.zeros(num_envs, dtype=int)
    envs = make_vector_env(env_id, num_envs, env_kwargs=env_kwargs, shifts=shifts,
                           atari_path="flavoured" if single_envs else "auto")  # fmt: skip
    was_training = policy.training
    policy.eval()
    returns: list[float] = []
    lengths: list[int] = []
    truncations: list[bool] = []
    try:
        cuda_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices), closing(envs):
            torch.manual_seed(seed)
            with env_errors(env_id, shifts, "during evaluation", envs, CALL_SECONDS):
                obs, info = envs.reset(seed=seed + EVAL_SEED_OFFSET)
            if observer is not None:
                observer.start(num_envs, shifts)
            obs_t = obs_to_tensors(obs, device)
            state = policy.initial_state(num_envs, device)
            starts = torch.ones(num_envs, dtype=torch.bool, device=device)
            while (done_count < quota).any():
                act = policy.act(obs_t, state, starts, deterministic=deterministic)
                if observer is not None:
                    observer.before_step(envs, act, info)
                with env_errors(env_id, shifts, "during evaluation", envs, CALL_SECONDS):
                    obs, _, terminated, truncated, info = envs.step(act.actions.cpu().numpy())
                if "episode" in info:
                    for i in np.flatnonzero(info["_episode"]):
                        counted = bool(done_count[i] < quota[i])
                        episode_return = float(info["episode"]["r"][i])
                        # an episode that also ended by the task's rules was not cut short
                        cut = bool(truncated[i] and not terminated[i])
                        if counted:
                            returns.append(episode_return)
                            lengths.append(int(info["episode"]["l"][i]))
                            truncations.append(cut)
                        if observer is not None:
                            outcome = outcome_of(env_id, episode_return, cut)
                            observer.episode_end(int(i), counted, outcome)
                        done_count[i] += 1
                obs_t = obs_to_tensors(obs, device)
                state = act.state
                starts = torch.as_tensor(terminated | truncated, device=device)
    finally:
        policy.train(was_training)
    return EvalResult.of(env_id, returns, lengths, truncations)
