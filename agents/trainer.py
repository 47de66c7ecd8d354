"""The training loop: rollout -> GAE -> PPO update -> log -> checkpoint, until ``total_steps``."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from agents.config import ConfigError, TrainConfig
from agents.gae import compute_gae
from agents.logger import RunLogger
from agents.ppo import ppo_update
from agents.rollout import RolloutCollector, seed_everything
from agents.storage import RolloutStorage
from envs.factory import make_vector_env
from policies.actor_critic import ActorCritic

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainResult:
    """Where a finished (or resumed-and-finished) run stands."""

    run_dir: Path
    global_step: int
    updates: int
    mean_recent_return: float | None
    seconds: float


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA is a ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for, but this torch build sees no CUDA device")
    return torch.device(name)


def holds_run(run_dir: Path) -> bool:
    """True if ``run_dir`` already holds a config, checkpoints or TensorBoard events."""
    return run_dir.is_dir() and (
        (run_dir / CONFIG_FILE).exists()
        or (run_dir / CHECKPOINT_DIR).exists()
        or any(run_dir.glob("events.out.tfevents.*"))
    )


def clear_run(run_dir: Path) -> None:
    """Remove only what a run writes (config, checkpoints, events); nothing else in the folder."""
    (run_dir / CONFIG_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    for events in run_dir.glob("events.out.tfevents.*"):
        events.unlink()


def saved_config(run_dir: Path) -> dict[str, Any]:
    """The config a run directory was started with."""
    path = run_dir / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} holds no {CONFIG_FILE}; nothing to resume") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None


def build_policy(config: TrainConfig, observation_space, action_space) -> ActorCritic:
    return ActorCritic(observation_space, int(action_space.n), config.policy_spec())


def checkpoint_payload(
    config: TrainConfig,
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    global_step: int,
    update: int,
    mean_return: float | None,
    best_return: float | None,
) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "policy_spec": policy.spec.to_dict(),
        "num_actions": policy.num_actions,
        "model": policy.state_dict(),
        "optimizer": optimizer.state_dict(),
        "global_step": global_step,
        "update": update,
        "mean_recent_return": mean_return,
        "best_return": best_return,
        "torch_rng": torch.get_rng_state(),
    }


class CheckpointWriter:
    """``checkpoints/latest.pt``, ``best.pt`` and the last N ``step_*.pt`` of a run."""

    def __init__(self, run_dir: Path, keep: int) -> None:
        self.dir = run_dir / CHECKPOINT_DIR
        self.keep = keep

    def write(self, payload: dict[str, Any], best: bool) -> Path:
        step_path = self.dir / f"step_{payload['global_step']:012d}.pt"
        save_checkpoint(self.dir / "latest.pt", payload)
        if self.keep:
            save_checkpoint(step_path, payload)
            for old in sorted(self.dir.glob("step_*.pt"))[: -self.keep]:
                old.unlink()
        if best:
            save_checkpoint(self.dir / "best.pt", payload)
        return self.dir / "latest.pt"


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says; resume from ``run_dir``'s latest checkpoint if ``resume``."""
    device = resolve_device(config.device)
    run_dir = Path(config.run_dir or config.default_run_dir())
    resumed = None
    if config.resume:
        resumed = load_checkpoint(run_dir / CHECKPOINT_DIR / "latest.pt")
    elif holds_run(run_dir):
        if not config.overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run; pass --resume to continue it "
                "or --overwrite to start afresh"
            )
        clear_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    start_step, start_update, best_return = 0, 0, None
    envs = make_vector_env(config.env, config.num_envs, config.async_envs)
    try:
        policy = build_policy(config, envs.single_observation_space, envs.single_action_space)
        policy.to(device)
        optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate, eps=1e-5)
        if resumed is not None:
            policy.load_state_dict(resumed["model"])
            optimizer.load_state_dict(resumed["optimizer"])
            torch.set_rng_state(resumed["torch_rng"])
            start_step, start_update = resumed["global_step"], resumed["update"]
            best_return = resumed["best_return"]
            generator.manual_seed(config.seed + start_update)
        if start_update >= config.num_updates:
            print(f"{run_dir} already finished its {config.total_steps} steps; nothing to do")
            return TrainResult(run_dir, start_step, start_update, resumed["mean_recent_return"], 0)

        storage = RolloutStorage(
            config.num_steps,
            config.num_envs,
            envs.single_observation_space,
            policy.initial_state(config.num_envs, device),
            config.sequence_length,
            device,
        )
        # A resumed run reseeds its envs past the seeds it has used (episodes do not repeat).
        env_seed = config.seed + 1_000_003 * start_update
        collector = RolloutCollector(envs, policy, storage, device, env_seed)
        logger = RunLogger(run_dir, config.num_updates * config.batch_size, start_step,
                           config.progress)  # fmt: skip
        checkpoints = CheckpointWriter(run_dir, config.keep_checkpoints)
        return _loop(
            config, policy, optimizer, storage, collector, logger, checkpoints, generator,
            start_step, start_update, best_return, run_dir,
        )  # fmt: skip
    finally:
        envs.close()


def _loop(
    config: TrainConfig,
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    storage: RolloutStorage,
    collector: RolloutCollector,
    logger: RunLogger,
    checkpoints: CheckpointWriter,
    generator: torch.Generator,
    global_step: int,
    start_update: int,
    best_return: float | None,
    run_dir: Path,
) -> TrainResult:
    started = time.perf_counter()
    update = start_update
    try:
        for update in range(start_update + 1, config.num_updates + 1):
            tick = time.perf_counter()
            lr = config.learning_rate
            if config.anneal_lr:
                lr *= 1.0 - (update - 1) / config.num_updates
            for group in optimizer.param_groups:
                group["lr"] = lr
            last_values, rollout = collector.collect()
            advantages, returns = compute_gae(
                storage.rewards, storage.values, storage.terminated, storage.ended,
                storage.bootstrap_values, last_values, config.gamma, config.gae_lambda,
            )  # fmt: skip
            stats = ppo_update(policy, optimizer, storage, advantages, returns, config, generator)
            global_step += config.batch_size
            sps = config.batch_size / (time.perf_counter() - tick)
            logger.log_update(global_step, config.batch_size, rollout, stats, lr, sps)
            if update % config.checkpoint_every == 0 or update == config.num_updates:
                mean = logger.mean_recent_return
                improved = mean is not None and (best_return is None or mean > best_return)
                best_return = mean if improved else best_return
                checkpoints.write(
                    checkpoint_payload(
                        config, policy, optimizer, global_step, update, mean, best_return
                    ),
                    best=improved,
                )
    finally:
        logger.close()
    seconds = time.perf_counter() - started
    return TrainResult(run_dir, global_step, update, logger.mean_recent_return, seconds)
