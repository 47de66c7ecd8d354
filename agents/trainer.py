"""The training loop: rollout -> GAE -> PPO update -> log -> checkpoint, until ``total_steps``."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from agents.atomic import atomic_output
from agents.checkpoint import CheckpointError, load_latest, save_checkpoint
from agents.config import ConfigError, TrainConfig, check_device_name
from agents.distributed import (
    Distributed,
    OtherRankStopped,
    any_rank,
    average_gradients,
    average_over_ranks,
    broadcast_parameters,
    gather_lists,
    init_distributed,
    local_device,
    parameters_identical,
    shutdown,
    stop_together,
)
from agents.gae import compute_gae
from agents.logger import RECENT_EPISODES, EventsUnwritable, RunLogger
from agents.ppo import ppo_update
from agents.precision import tf32_matmuls
from agents.rng import capture_rng_states, restore_rng_states, seed_everything
from agents.rollout import RolloutCollector
from agents.schedule import ScheduleStart
from agents.storage import RolloutStorage
from agents.training_eval import EvalTarget, RowResult, TrainingEvaluator, eval_targets
from envs.factory import env_module, make_env, make_vector_env, probe_resets
from envs.jsonfile import NotJson, read_json
from envs.probe import TimeLimitReached, failure_summary
from policies import triton_steps
from policies.actor_critic import ActorCritic
from policies.centring import FeatureMoments, mean_to_spread
from policies.compiled import error_summary

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class BestEvaluation:
    """The best evaluation of a run's target so far (``eval/return``), which ``best.pt``
    holds; its step is None where a checkpoint from before it was recorded was resumed."""

    mean_return: float
    step: int | None


def resumed_schedule_start(resumed: dict[str, Any]) -> int | None:
    """The step the checkpoint's ``--shift-schedule`` started at (None: still waiting); 0 for a
    checkpoint from before the key, whose schedule began with the run."""
    return resumed.get("schedule_start", 0)


def resumed_best_evaluation(resumed: dict[str, Any], config: TrainConfig) -> BestEvaluation | None:
    """The best evaluation a checkpoint holds, where it was of ``config``'s target. Absent
    before ``--eval-every``; a checkpoint from before ``target_row`` measured it on the
    training shifts, which do not compare where the target is now the env alone."""
    measured_on = resumed.get("best_eval_shifts", config.train_row.label)
    best = resumed.get("best_eval_return")
    if best is None or measured_on != config.target_row.label:
        return None
    return BestEvaluation(best, resumed.get("best_eval_step"))


@dataclass
class TrainResult:
    """Where a finished (or resumed-and-finished) run stands."""

    run_dir: Path
    global_step: int
    updates: int
    mean_recent_return: float | None
    seconds: float
    ranks: int = 1  # data-parallel processes (torchrun)
    is_main: bool = True  # rank 0: the process that reports
    parameters_identical: bool = True  # all ranks ended with the same parameters
    # RIMs: (units selection switched, units) in the last update's rollout; None otherwise
    selection: tuple[int, int] | None = None
    best_evaluation: BestEvaluation | None = None  # with --eval-every: what best.pt holds
    # the step --shift-schedule's step 0 fell on (None: --schedule-after-return never reached)
    schedule_start: int | None = 0


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA or a name other than
    ``auto``, ``cpu``, ``cuda`` and ``cuda:N`` is a ``ConfigError``."""
    check_device_name(name)
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
        return read_json(path)
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} holds no {CONFIG_FILE}; nothing to resume") from None
    except NotJson as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None


def build_policy(config: TrainConfig, observation_space, action_space) -> ActorCritic:
    policy = ActorCritic(observation_space, int(action_space.n), config.policy_spec())
    # Speed settings, not in the spec.
    if config.rims_compile:  # validated: the core is RIMs
        policy.compile_act = True
        policy.core.compile_steps = True
    if config.rims_triton:  # validated: the core and its configuration fit the kernels
        policy.core.triton_steps = True
    if config.rims_graphs and config.core == "rims":  # the others run as they are
        policy.core.cuda_graphs = True
    return policy


def kernels_off(core: Any, device: torch.device, compiled: bool) -> None:
    """Where ``--rims-triton``'s kernels cannot run on ``device`` (no Triton, a CPU), say so in
    one line and switch them off, so that the core does not warn at its first step."""
    problem = triton_steps.unavailable(device)
    if problem is not None:
        core.triton_steps = False
        print(f"rims: --rims-triton: {triton_steps.fallback_message(problem, compiled)}",
              file=sys.stderr, flush=True)  # fmt: skip


def check_policy_fits(config: TrainConfig) -> list[EvalTarget]:
    """Raise ``ConfigError`` if the policy the config asks for cannot read the env's
    observations (e.g. ``--encoder nature`` on Minigrid's symbolic view, ``--rims-spatial`` on
    a flat vector), ``EnvError`` if the env or a row of ``--eval-suite`` cannot make its levels
    or does not fit the policy. Returns what ``--eval-every`` evaluates. Builds one env and one
    policy on the CPU, so it draws from the global RNGs."""
    shifts, other = config.train_shifts, config.other_shifts
    probe_resets(config.env, shifts, config.env_kwargs())  # EnvError if it cannot reset
    # With --shift-schedule the other env (unshifted, or with --other-shift) is built too: it
    # must fit the same spaces.
    share = None if config.share_schedule is None else 1.0
    if share is not None:
        probe_resets(config.env, other, config.env_kwargs())
    env = make_env(config.env, shifts=shifts, shift_share=share, other_shifts=other,
                   **config.env_kwargs())  # fmt: skip
    try:
        policy = build_policy(config, env.observation_space, env.action_space)
    except ValueError as err:
        raise ConfigError(f"the policy does not fit {config.env}: {err}") from None
    finally:
        env.close()
    return eval_targets(config, env.observation_space, policy.num_actions)


def checkpoint_payload(
    config: TrainConfig,
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    global_step: int,
    update: int,
    recent_returns: Sequence[float],
    best_return: float | None,
    best_evaluation: BestEvaluation | None = None,
    schedule_start: int | None = 0,
) -> dict[str, Any]:
    """What a checkpoint holds. ``recent_returns``: the last training episodes' returns (at
    most ``RECENT_EPISODES``), whose mean is the run's mean recent return; a resumed run goes
    on from them."""
    recent = [float(r) for r in recent_returns]
    return {
        "config": config.to_dict(),
        "policy_spec": policy.spec.to_dict(),
        "num_actions": policy.num_actions,
        "model": policy.state_dict(),
        "optimizer": optimizer.state_dict(),
        "global_step": global_step,
        "update": update,
        "mean_recent_return": float(np.mean(recent)) if recent else None,
        "recent_returns": recent,
        "best_return": best_return,
        "best_eval_return": None if best_evaluation is None else best_evaluation.mean_return,
        "best_eval_step": None if best_evaluation is None else best_evaluation.step,
        "best_eval_shifts": config.target_row.label,  # what best_eval_return was measured on
        "schedule_start": schedule_start,  # ScheduleStart.start: None while it waits
        **capture_rng_states(),
    }


class CheckpointWriter:
    """``checkpoints/latest.pt``, ``best.pt`` and the last N ``step_*.pt`` of a run."""

    def __init__(self, run_dir: Path, keep: int, latest_step: int | None = None) -> None:
        self.dir = run_dir / CHECKPOINT_DIR
        self.keep = keep
        self.latest_step = latest_step  # the step latest.pt holds (None: none written)

    def write_best(self, payload: dict[str, Any]) -> None:
        save_checkpoint(self.dir / "best.pt", payload)

    def write(self, payload: dict[str, Any], best: bool) -> Path:
        step_path = self.dir / f"step_{payload['global_step']:012d}.pt"
        save_checkpoint(self.dir / "latest.pt", payload)
        self.latest_step = payload["global_step"]
        if self.keep:
            save_checkpoint(step_path, payload)
            for old in sorted(self.dir.glob("step_*.pt"))[: -self.keep]:
                old.unlink()
        if best:
            self.write_best(payload)
        return self.dir / "latest.pt"


class TrainingStopped(Exception):
    """Training ended early (a signal, a diverged loss, a crashed env); the message is one line
    and ``exit_code`` is what the command exits with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        """Picklable with its arguments, so a run in a worker process (a benchmark's process
        pool) reports its stop to the parent instead of breaking the pool."""
        return type(self), (str(self), self.exit_code)


class StopSignals:
    """Within ``with``: the first SIGINT/SIGTERM asks the loop to stop after the current step
    (said on stderr where ``announce``: under torchrun, by rank 0 alone); a second SIGINT raises
    ``KeyboardInterrupt`` at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True) -> None:
        self.received: int | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        if not self.announce:
            return
        print(
            f"\nrims: {signal.Signals(signum).name} received; stopping after this step "
            "(press Ctrl-C again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def resume_command(run_dir: Path, processes: int) -> str:
    """The command that resumes ``run_dir`` with as many processes as it was trained by."""
    if processes == 1:
        return f"rims train --run-dir {run_dir} --resume"
    return (
        f"torchrun --nproc_per_node {processes} train.py --run-dir {run_dir} --resume "
        f"({processes} processes in all, on one machine or several)"
    )


def check_same_processes(resumed: dict[str, Any], config: TrainConfig, world: Distributed,
                         run_dir: Path) -> None:  # fmt: skip
    """``ConfigError`` unless ``resumed`` was trained by as many processes as run now: each
    process's envs make part of every update, so another count changes the batch and would
    run past (or short of) ``--total-steps``. The count is the checkpoint's steps per update
    over the config's (``num_envs x num_steps``) steps a process takes in one."""
    if not resumed["update"]:
        return
    trained_by = resumed["global_step"] // (resumed["update"] * config.batch_size)
    if trained_by == world.world_size:
        return
    raise ConfigError(
        f"{run_dir} was trained by {processes_text(trained_by)} and this run has "
        f"{processes_text(world.world_size)}; resume it with as many: "
        f"{resume_command(run_dir, trained_by)}"
    )


def processes_text(count: int) -> str:
    """``one process``, ``2 data-parallel processes``."""
    return "one process" if count == 1 else f"{count} data-parallel processes"


def update_seed(seed: int, update: int) -> int:
    """The minibatch-order seed of one update: the same whether or not the run was resumed."""
    return (seed * 1_000_003 + update) % (2**63)


def all_finite(parameters) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for p in parameters]).all())


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says; resume from ``run_dir``'s latest checkpoint if ``resume``.

    Raises ``TrainingStopped`` after writing a checkpoint when a signal arrives or an env crashes,
    and without one (the last good checkpoint stays) when the loss or parameters diverge.
    """
    device = resolve_device(config.device)
    world = init_distributed(device)
    try:
        return _train(config, local_device(device, world), world)
    except (MemoryError, RuntimeError) as err:
        why = out_of_memory(err)
        if why is None:
            raise
        raise TrainingStopped(
            f"out of memory: {why}; a smaller --hidden-size, --num-units, --feature-size, "
            "--num-envs or --num-steps needs less",
            1,
        ) from None
    finally:
        shutdown(world)


def out_of_memory(err: BaseException) -> str | None:
    """What could not be allocated, where ``err`` is a failed allocation (Python's
    ``MemoryError``, torch's CPU allocator's ``RuntimeError``, CUDA's ``OutOfMemoryError``);
    None for any other error."""
    text = str(err)
    cpu = isinstance(err, RuntimeError) and "can't allocate memory" in text
    if not (cpu or isinstance(err, (MemoryError, torch.OutOfMemoryError))):
        return None
    asked = re.search(r"allocate (\d+) bytes|allocate ([\d.]+ [KMGT]?i?B)", text)
    if asked is None:
        return "an allocation failed"
    size = f"{int(asked[1]):,} bytes" if asked[1] else asked[2]
    return f"{size} could not be allocated"


def _train(config: TrainConfig, device: torch.device, world: Distributed) -> TrainResult:
    run_dir = Path(config.run_dir or config.default_run_dir())
    resumed = None
    if config.resume:
        with stop_together(world):  # every rank reads it: rank 0 says what is wrong with it
            resumed = load_latest(run_dir / CHECKPOINT_DIR)
            check_same_processes(resumed, config, world, run_dir)
        if resumed["update"] >= num_updates(config, world):
            if world.is_main:
                print(f"{run_dir} already finished its {config.total_steps:,} steps; nothing "
                      "to do (pass a larger --total-steps to extend it)")  # fmt: skip
            best = resumed_best_evaluation(resumed, config)
            return TrainResult(run_dir, resumed["global_step"], resumed["update"],
                               resumed["mean_recent_return"], 0.0, world.world_size,
                               world.is_main, best_evaluation=best,
                               schedule_start=resumed_schedule_start(resumed))  # fmt: skip
    replaces = resumed is None and world.is_main and holds_run(run_dir)
    with stop_together(world):  # rank 0 alone checks, clears and writes the run directory
        if replaces and not config.overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run; pass --resume to continue it "
                "or --overwrite to start afresh"
            )
        targets = check_policy_fits(config)  # before anything is written or cleared, and seeding
        if replaces:
            clear_run(run_dir)
        if world.is_main:
            try:
                with atomic_output(run_dir / CONFIG_FILE) as tmp:  # no part of it on a full disk
                    tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
            except OSError as err:
                raise ConfigError(
                    f"cannot write the run directory {run_dir}: {err.strerror or err}"
                ) from None

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    seed_everything(config.seed + 1_009 * world.rank)  # ranks sample different actions
    schedule = config.share_schedule
    envs = make_vector_env(config.env, config.num_envs, config.async_envs, config.env_kwargs(),
                           config.train_shifts, config.env_timeout or None,
                           shift_share=None if schedule is None else schedule(0),
                           other_shifts=config.other_shifts)  # fmt: skip
    try:
        with (
            StopSignals(announce=world.is_main) as signals,
            torch.autograd.set_detect_anomaly(config.detect_anomaly),
            tf32_matmuls(config.tf32),
        ):
            try:
                with stop_together(world):  # rank 0 alone starts the event file
                    trainer = Trainer(
                        config, envs, device, run_dir, resumed, signals, world, targets
                    )
            except EventsUnwritable as err:  # the event file could not be started
                kept = "no checkpoint was written" if resumed is None else (
                    f"{run_dir / CHECKPOINT_DIR / 'latest.pt'} still holds step "
                    f"{resumed['global_step']:,}"
                )  # fmt: skip
                raise TrainingStopped(f"{err}; nothing was trained and {kept}", 1) from None
            return trainer.run()
    finally:
        close_envs(envs)


def close_envs(envs) -> None:
    """Close the envs. If that fails (an async worker died mid-step, so the pending step can
    never finish), terminate the remaining workers and mark the envs closed, so the error that
    stopped training is the one the user sees."""
    try:
        with warnings.catch_warnings():  # Gymnasium warns that a step is pending: we know
            warnings.filterwarnings("ignore", message=".*while waiting for a pending call")
            envs.close()
    except Exception:
        base = envs.unwrapped
        for process in getattr(base, "processes", ()):
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
        base.closed = True


def num_updates(config: TrainConfig, world: Distributed) -> int:
    """Updates to reach ``total_steps``, which counts the steps of all ranks together."""
    return max(1, -(-config.total_steps // (config.batch_size * world.world_size)))


class TimedEvaluation(NamedTuple):
    """One evaluation during training: each row's result and the seconds it took."""

    results: list[RowResult]
    seconds: float


class Trainer:
    """Holds one run's policy, optimizer, storage, collector, logger and counters."""

    def __init__(
        self,
        config: TrainConfig,
        envs,
        device: torch.device,
        run_dir: Path,
        resumed: dict[str, Any] | None,
        signals: StopSignals,
        world: Distributed,
        eval_targets: list[EvalTarget] | None = None,
    ) -> None:
        """``eval_targets``: what ``--eval-every`` evaluates (``check_policy_fits``' answer)."""
        self.config, self.run_dir, self.signals, self.world = config, run_dir, signals, world
        self.num_updates = num_updates(config, world)
        self.steps_per_update = config.batch_size * world.world_size
        self.policy = build_policy(config, envs.single_observation_space, envs.single_action_space)
        self.policy.to(device)
        if config.rims_triton:
            kernels_off(self.policy.core, device, config.rims_compile)
        broadcast_parameters(self.policy, world)  # every rank starts from rank 0's weights
        self.optimizer = torch.optim.Adam(
            self.policy.parameters(), lr=config.learning_rate, eps=1e-5
        )
        self.global_step, self.update, self.best_return = 0, 0, None
        self.best_evaluation: BestEvaluation | None = None
        if resumed is not None:
            self.policy.load_state_dict(resumed["model"])
            self.optimizer.load_state_dict(resumed["optimizer"])
            if world.world_size == 1:
                restore_rng_states(resumed)
            else:  # the checkpoint holds rank 0's generators; every rank needs its own stream
                seed_everything(config.seed + 1_009 * world.rank + 7_919 * resumed["update"])
            self.global_step, self.update = resumed["global_step"], resumed["update"]
            self.best_return = resumed["best_return"]
            self.best_evaluation = resumed_best_evaluation(resumed, config)
        self.schedule_start = ScheduleStart.new_run(config.schedule_after_return, RECENT_EPISODES)
        if resumed is not None:
            self.schedule_start.start = resumed_schedule_start(resumed)
        self.storage = RolloutStorage(
            config.num_steps, config.num_envs, envs.single_observation_space,
            self.policy.initial_state(config.num_envs, device), config.sequence_length, device,
        )  # fmt: skip
        # A resumed run reseeds its envs past the seeds it has used (episodes do not repeat);
        # each rank's envs get their own seeds.
        env_seed = config.seed + 1_000_003 * self.update + 100_003 * world.rank
        self.collector = RolloutCollector(
            envs, self.policy, self.storage, device, env_seed,
            clip_rewards=config.clip_rewards, episodic_life=config.episodic_life,
            env_seconds=config.env_timeout or None,
        )  # fmt: skip
        # Only rank 0 logs and writes checkpoints.
        self.logger = RunLogger(
            run_dir, self.num_updates * self.steps_per_update, self.global_step,
            config.progress, config.image_every, enabled=world.is_main,
        )  # fmt: skip
        if resumed is not None:  # a checkpoint from before the key: none; the window refills
            self.logger.recent_returns.extend(resumed.get("recent_returns", []))
        resumed_step = None if resumed is None else resumed["global_step"]
        self.checkpoints = CheckpointWriter(run_dir, config.keep_checkpoints, resumed_step)
        self.generator = torch.Generator()
        self.evaluator = TrainingEvaluator(config, eval_targets or [], world)

    def _payload(self) -> dict[str, Any]:
        return checkpoint_payload(
            self.config, self.policy, self.optimizer, self.global_step, self.update,
            self.logger.recent_returns, self.best_return, self.best_evaluation,
            self.schedule_start.start,
        )  # fmt: skip

    def save(self, best: bool = False) -> Path:
        """Write ``latest.pt`` and a numbered checkpoint, and ``best.pt`` too if ``best``."""
        if not self.world.is_main:
            return self.checkpoints.dir / "latest.pt"
        with self.stop_if_unwritable():
            return self.checkpoints.write(self._payload(), best=best)

    def save_best(self) -> None:
        """Write ``best.pt`` alone."""
        if self.world.is_main:
            with self.stop_if_unwritable():
                self.checkpoints.write_best(self._payload())

    @contextmanager
    def stop_if_unwritable(self) -> Iterator[None]:
        """A checkpoint that cannot be written (a full disk) stops the run with one line that
        names the one that holds its progress: ``latest.pt``, written first, and atomically."""
        try:
            yield
        except CheckpointError as err:
            raise self.stopped_unwritten(err) from None

    def stopped_unwritten(self, err: Exception) -> TrainingStopped:
        """The stop for an output that could not be written (``err`` says which), naming the
        step the run reached and what ``latest.pt`` holds."""
        return TrainingStopped(
            f"{err}; the run stopped at step {self.global_step:,} and {self.last_checkpoint()}", 1
        )

    def last_checkpoint(self) -> str:
        """``runs/x/checkpoints/latest.pt holds step 4,096``, or that none was written (on the
        main process: other ranks write none)."""
        step = self.checkpoints.latest_step
        latest = self.checkpoints.dir / "latest.pt"
        return "no checkpoint was written" if step is None else f"{latest} holds step {step:,}"

    def evaluate_if_due(self, update: int) -> TimedEvaluation | None:
        """Evaluate after ``update`` where ``--eval-every`` says so (every rank must call
        it); None where it is not due."""
        if not self.evaluator.due(update, self.num_updates):
            return None
        tick = time.perf_counter()
        results = self.evaluator.evaluate(self.policy, should_stop=self.stop_requested)
        return TimedEvaluation(results, time.perf_counter() - tick)

    def record_evaluation(self, evaluation: TimedEvaluation) -> None:
        """Log ``evaluation``; one of the run's target that beats the best so far is written
        as ``best.pt``."""
        results = evaluation.results
        self.logger.log_eval(self.global_step, results, evaluation.seconds)
        own = [r.result.mean_return for r in results if r.target.is_target]
        best = self.best_evaluation
        if own and (best is None or own[0] > best.mean_return):
            self.best_evaluation = BestEvaluation(own[0], self.global_step)
            self.save_best()

    def checkpoint_if_due(self, update: int) -> None:
        """Write a checkpoint after ``update`` where ``--checkpoint-every`` says so, and after
        the last; ``best.pt`` too where the mean recent return is the best so far, unless
        evaluations of the run's target choose it (``record_evaluation``)."""
        if update % self.config.checkpoint_every and update != self.num_updates:
            return
        mean, best = self.logger.mean_recent_return, self.best_return
        improved = mean is not None and (best is None or mean > best)
        self.best_return = mean if improved else best
        self.save(best=improved and not self.evaluator.evaluates_target)

    def stop_requested(self) -> bool:
        return self.signals.received is not None

    def run(self) -> TrainResult:
        started = time.perf_counter()
        try:
            try:
                while self.update < self.num_updates:
                    if not self.one_update():
                        break
                with stop_together(self.world):  # the event file's last records: rank 0's
                    self.logger.close()
            finally:
                self.logger.close()  # where an error stopped the loop; a second close is none
        except EventsUnwritable as err:  # a full disk: keep the last update if it still fits
            with suppress(TrainingStopped):  # it did not fit: the line says what latest.pt holds
                self.save()
            raise self.stopped_unwritten(err) from None
        identical = parameters_identical(self.policy, self.world)
        if self.signals.received is not None:
            name = signal.Signals(self.signals.received).name
            with stop_together(self.world):  # every rank stops; rank 0 writes and says so
                path = self.save()
                raise TrainingStopped(
                    f"stopped by {name} at step {self.global_step:,}; checkpoint {path}; "
                    f"continue with: {resume_command(self.run_dir, self.world.world_size)}",
                    128 + self.signals.received,
                )
        seconds = time.perf_counter() - started
        return TrainResult(
            self.run_dir, self.global_step, self.update, self.logger.mean_recent_return, seconds,
            self.world.world_size, self.world.is_main, identical, self.logger.last_selection,
            self.best_evaluation, self.schedule_start.start,
        )  # fmt: skip

    def share_shifts(self) -> float | None:
        """With ``--shift-schedule``: the share of shifted episodes at this step, which the
        envs draw their next episodes with (None without a schedule)."""
        schedule = self.config.share_schedule
        if schedule is None:
            return None
        share = schedule(self.schedule_start.step(self.global_step))
        self.collector.envs.unwrapped.call("set_shift_share", share)  # each env, in each worker
        return share

    def one_update(self) -> bool:
        """Collect a rollout and learn from it. False if a stop was requested during the rollout
        (then nothing is learned from it and the policy is the one of the last update)."""
        config, update = self.config, self.update + 1
        tick = time.perf_counter()
        lr = config.learning_rate
        if config.anneal_lr:
            lr *= 1.0 - (update - 1) / self.num_updates
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        share = self.share_shifts()
        try:
            with stop_together(self.world):  # one rank's envs may fail alone
                collected = self.collector.collect(should_stop=self.stop_requested)
        except OtherRankStopped:  # another rank's envs failed: rank 0 keeps the progress
            self.save()
            raise
        except Exception as err:  # a crashed env (e.g. an async worker that raised or died)
            path = self.save()
            if isinstance(err, (EOFError, BrokenPipeError, ConnectionResetError)):
                what = "an env worker process died without a word: a segfault, the OOM killer "
                what += f"or a kill; {type(err).__name__}"
            else:  # in-process envs: the place in the env's own code (a bare assert's line)
                module = env_module(self.collector.envs)
                what = failure_summary(err, module) if module else error_summary(err)
                if isinstance(err, TimeLimitReached):
                    what += "; --env-timeout sets the limit"
            raise TrainingStopped(
                f"an environment failed during update {update} ({what}); checkpoint {path}", 1
            ) from err
        if any_rank(collected is None, self.world):  # a signal: every rank stops together
            return False
        last_values, rollout = collected
        rollout.episode_returns = gather_lists(rollout.episode_returns, self.world)
        rollout.episode_lengths = gather_lists(rollout.episode_lengths, self.world)
        storage = self.storage
        advantages, returns = compute_gae(
            storage.rewards, storage.values, storage.terminated, storage.ended,
            storage.bootstrap_values, last_values, config.gamma, config.gae_lambda,
        )  # fmt: skip
        self.generator.manual_seed(update_seed(config.seed, update))
        stats = ppo_update(
            self.policy, self.optimizer, storage, advantages, returns, config, self.generator,
            after_backward=lambda error: average_gradients(self.policy, self.world, error),
            mean_over_ranks=lambda kl: average_over_ranks(kl, self.world),
        )  # fmt: skip
        diverged = not (stats.finite and all_finite(self.policy.parameters()))
        with stop_together(self.world):  # the same on every rank (the gradients are averaged)
            if diverged:
                raise TrainingStopped(
                    f"the loss or the parameters became NaN/inf in update {update} (step "
                    f"{self.global_step + self.steps_per_update:,}); {self.last_checkpoint()}; "
                    "--detect-anomaly helps find where",
                    1,
                )
        centring = self.policy.centring
        if centring is not None:  # the next rollout's centre: this one's features
            moments = self.policy.feature_moments(storage.obs)
            moments = FeatureMoments(*(average_over_ranks(m, self.world) for m in moments))
            centring.update(moments)
        self.update = update
        self.global_step += self.steps_per_update
        sps = self.steps_per_update / (time.perf_counter() - tick)
        evaluation = self.evaluate_if_due(update)  # every rank plays its share
        with stop_together(self.world):  # rank 0 writes: a full disk stops every rank here
            self.logger.log_update(self.global_step, self.steps_per_update, rollout, stats, lr, sps)
            recent = self.logger.recent_returns  # every rank's episodes: the same on every rank
            reached = self.schedule_start.reached(self.global_step, recent)
            if reached is not None:
                self.logger.log_schedule_start(self.global_step, reached)
            if share is not None:
                self.logger.log_shift_share(self.global_step, share)
            if centring is not None:
                factor = float(centring.scale) if centring.keep_size else None
                self.logger.log_features(self.global_step, mean_to_spread(moments), factor)
            if evaluation is not None:
                self.record_evaluation(evaluation)
            self.checkpoint_if_due(update)
        return True
