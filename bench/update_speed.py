"""One PPO minibatch (loss and backward) of the default ``rims train`` policy, with and without
``--selection-balance``, through the core's hand-written backward and through autograd.

The policy plays one rollout of the default DoorKey-5x5 configuration; then the four cases take
turns on its first minibatch, ``--repeats`` rounds, and each prints its median time and its
ratio to the hand-written backward without the balance loss (only ratios count on a shared CPU).

    python bench/update_speed.py                 # the default run's shapes, one thread
    python bench/update_speed.py --spatial       # --rims-spatial (autograd either way: N=49)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from agents.config import TrainConfig
from agents.gae import compute_gae
from agents.ppo import minibatch_loss
from agents.rollout import RolloutCollector
from agents.sampler import SequenceBatch, sequence_minibatches
from agents.storage import RolloutStorage
from agents.trainer import build_policy
from envs.factory import make_vector_env
from policies.actor_critic import ActorCritic

BALANCE = 0.1


def first_minibatch(config: TrainConfig) -> tuple[ActorCritic, SequenceBatch]:
    """A freshly built policy of ``config`` and the first minibatch of one rollout it played."""
    torch.manual_seed(0)
    envs = make_vector_env(config.env, config.num_envs, env_kwargs=config.env_kwargs())
    policy = build_policy(config, envs.single_observation_space, envs.single_action_space)
    cpu = torch.device("cpu")
    storage = RolloutStorage(
        config.num_steps, config.num_envs, envs.single_observation_space,
        policy.initial_state(config.num_envs), config.sequence_length, cpu,
    )  # fmt: skip
    last_values, _ = RolloutCollector(envs, policy, storage, cpu, seed=3).collect()
    envs.close()
    adv, ret = compute_gae(
        storage.rewards, storage.values, storage.terminated, storage.ended,
        storage.bootstrap_values, last_values, config.gamma, config.gae_lambda,
    )  # fmt: skip
    return policy, next(iter(sequence_minibatches(storage, adv, ret, config.num_minibatches)))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Prints a row per case; returns each case's median seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25, help="rounds of the four cases")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--spatial", action="store_true", help="--rims-spatial")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    balanced = TrainConfig(selection_balance=BALANCE, rims_spatial=args.spatial)
    plain = dataclasses.replace(balanced, selection_balance=0.0)
    policy, batch = first_minibatch(balanced)
    policy.train()
    cases = {  # name: (hand-written backward, config)
        "hand-written, no balance": (True, plain),
        f"hand-written, balance {BALANCE}": (True, balanced),
        "autograd, no balance": (False, plain),
        f"autograd, balance {BALANCE}": (False, balanced),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name, (manual, config) in cases.items():
            policy.core.manual_backward = manual
            policy.zero_grad()
            start = time.perf_counter()
            minibatch_loss(policy, batch, config).loss.backward()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts[1:]) for name, ts in times.items()}
    base = medians["hand-written, no balance"]
    spatial = ", --rims-spatial" if args.spatial else ""
    print(f"one minibatch ({batch.actions.numel()} steps), loss + backward, {args.threads} "
          f"thread(s), median of {args.repeats}{spatial}:")  # fmt: skip
    for name, seconds in medians.items():
        print(f"  {name:28s} {1e3 * seconds:8.1f} ms  {seconds / base:.2f}x")
    return medians


if __name__ == "__main__":
    main()
