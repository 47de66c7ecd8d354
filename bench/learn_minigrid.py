"""Does plain ``rims train`` solve DoorKey-5x5 on this CPU, and how does the LSTM core compare?

Trains each core with the default config (only --core, --seed and --total-steps set), then
evaluates the final policy on 100 fresh episodes. Prints, per run: the first step at which the
mean training return of an update reached 0.9 and stayed there for the next two updates (a
single update can pass it by luck: the first rollout's few finished episodes are the short,
successful ones), the final last-100 training return, the evaluation return, wall time and
steps/s; then how many runs of each core reached 0.9. With ``--jobs 1`` (default) runs go one
after the other so they do not share the CPU; ``--jobs N`` runs N at once, each on one torch
thread (results are the same learning process, rounded differently). Its workers stop when it
does, however it is killed: each stops its run after the step, with a checkpoint.

    python bench/learn_minigrid.py                       # rims and lstm, seed 1, 300k steps
    python bench/learn_minigrid.py --cores rims --seeds 1 2 3 --total-steps 300000
    python bench/learn_minigrid.py --cores rims lstm --seeds $(seq 13 28) --jobs 2
    python bench/learn_minigrid.py --cores rims --seeds 1 2 3 --set k=5 --set ent_coef=0.01
    python bench/learn_minigrid.py --env MiniGrid-Fetch-5x5-N2-v0 --cores rims --seeds 1 2 \
        --total-steps 800000 --jobs 2 --set mission=false    # the mission unread
    python bench/learn_minigrid.py --env MiniGrid-MemoryS7-v0 --seeds $(seq 1 10) --jobs 2 \
        --total-steps 1000000 --episodes 200 --eval-unshifted \
        --set 'shift=["sides=fixed,random", "start_dir=0,2"]' \
        --set shift_schedule=0:1,400000:1,900000:0           # MemoryS7's curriculum

Runs evaluate on their target: the training env with its shifts, or without them where a
``shift_schedule`` ends at 0. ``--eval-unshifted`` evaluates on the env alone whatever the
schedule, what a fixed curriculum of shifts is for.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

THRESHOLD = 0.9
SUSTAINED = 3  # updates in a row at or above THRESHOLD


class Run(NamedTuple):
    """One training run's outcome."""

    core: str
    seed: int
    reached: int | None  # first step of SUSTAINED updates in a row with mean return >= THRESHOLD
    train_return: float  # mean of the last 100 training episodes
    eval_return: float
    wall_seconds: float
    steps_per_second: float  # nan for a run that stopped early
    stopped: str | None = None  # why the run stopped early (NaNs), None if it finished
    switched: int | None = None  # RIMs units top-k switched over the evaluation; None: not RIMs
    eval_success: float | None = None  # the evaluation's success rate; None: the env has none


def first_sustained_step(
    points: list[tuple[int, float]], threshold: float = THRESHOLD, sustained: int = SUSTAINED
) -> int | None:
    """``(step, value)`` points in step order -> the step of the first of ``sustained``
    consecutive points with value >= ``threshold`` (None if there is no such run of points)."""
    streak = 0
    for i, (_, value) in enumerate(points):
        streak = streak + 1 if value >= threshold else 0
        if streak == sustained:
            return points[i - sustained + 1][0]
    return None


def median_reached(reached: list[int | None]) -> float | None:
    """The median over runs of the step each first held the threshold, a run that never did
    counting as later than any (None where half the runs or more never did: the median is then
    not a step)."""
    never = sum(r is None for r in reached)
    if not reached or 2 * never >= len(reached):
        return None
    return float(np.median([math.inf if r is None else r for r in reached]))


def return_curve(run_dir: Path) -> list[tuple[int, float]]:
    """``charts/episodic_return`` of a run, ``(step, mean return of that update)``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    if "charts/episodic_return" not in acc.Tags()["scalars"]:  # no episode ended
        return []
    return [(e.step, e.value) for e in acc.Scalars("charts/episodic_return")]


def parse_override(text: str) -> tuple[str, object]:
    """``"k=5"`` -> ``("k", 5)``: a config field and a JSON value (a bare word stays a string;
    ``True``/``False``/``None`` in any case are the bool and None, as on the command line)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    words = {"true": True, "false": False, "none": None}
    try:
        parsed = words[value.lower()] if value.lower() in words else json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.replace("-", "_"), parsed


def stop_when_orphaned(parent: int, poll_seconds: float = 1.0) -> None:
    """Worker initializer: once process ``parent`` is gone (killed, so that this worker was
    handed to another parent), end this worker with SIGTERM. A run in progress handles it as it
    does Ctrl-C (it stops after its step, with a checkpoint); once its handler is gone, a second
    SIGTERM ends the process, which would otherwise wait for work forever. Without this a pool's
    workers train on for the rest of their runs after the sweep that started them has died."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        signalled = None
        while True:  # a run's handler once, then (or at once, outside a run) the default
            handler = signal.getsignal(signal.SIGTERM)
            if handler != signalled:
                signalled = handler
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(poll_seconds)

    threading.Thread(target=watch, name="stop-when-orphaned", daemon=True).start()


def core_fields(core: str) -> dict[str, object]:
    """A ``--cores`` name -> config fields: ``rims-compile`` is rims with ``--rims-compile``."""
    return dict(core=core.removesuffix("-compile"), rims_compile=core.endswith("-compile"))


def train_and_evaluate(
    env: str, core: str, seed: int, total_steps: int, episodes: int, run_dir: Path, threads: int,
    overrides: dict[str, object], eval_unshifted: bool = False,
) -> Run:  # fmt: skip
    """One run: ``core`` is a ``--core`` name, or ``rims-compile`` for rims with
    ``--rims-compile``; ``threads`` 0 keeps torch's default; ``overrides`` are config fields;
    ``eval_unshifted``: evaluate on ``env`` without the run's training shifts (else on the run's
    target, ``TrainConfig.target_row``)."""
    from agents.checkpoint import load_policy
    from agents.config import resolve_config
    from agents.evaluate import evaluate
    from agents.mechanisms import MechanismRecorder
    from agents.selection import switched_units
    from agents.trainer import TrainingStopped, train

    config = resolve_config({
        **dict(env=env, **core_fields(core), seed=seed, total_steps=total_steps,
               run_dir=str(run_dir), overwrite=True, progress=False, torch_threads=threads),
        **overrides,  # --set wins (--set torch_threads=1 for a run beside another job)
    })  # fmt: skip
    start = time.perf_counter()
    result, stopped = None, None
    try:
        result = train(config)
    except TrainingStopped as stop:
        if stop.exit_code != 1:  # a signal: the whole sweep stops
            raise
        # Diverged (NaNs): the run's curve so far and its last good checkpoint still count,
        # and the other runs go on.
        stopped = str(stop)
    wall = time.perf_counter() - start
    curve = return_curve(run_dir)
    if result is not None:
        final, sps = result.mean_recent_return or 0.0, result.global_step / result.seconds
    else:
        final, sps = (curve[-1][1] if curve else 0.0), float("nan")
    saved = (run_dir / "checkpoints" / "latest.pt").exists()  # none if the first update failed
    evaluated, switched, success = float("nan"), None, None
    if saved:  # the run's env settings and shifts (the mission's words, --set shift=...)
        loaded = load_policy(run_dir)
        policy, rims = loaded.policy, config.core == "rims"
        # RIMs: which units the evaluation's steps switch (rims mechanisms' 5-95% rule).
        names = [str(a) for a in range(policy.num_actions)]
        recorder = MechanismRecorder(names) if rims else None
        shifts = () if eval_unshifted else loaded.config.target_row.shifts
        played = evaluate(policy, env, episodes, seed=seed, shifts=shifts,
                          env_kwargs=loaded.config.env_kwargs(), observer=recorder)  # fmt: skip
        evaluated, success = played.mean_return, played.success_rate
        if recorder is not None:
            switched = len(switched_units(np.stack(recorder.masks).mean(0).tolist()))
    run = Run(core, seed, first_sustained_step(curve), final, evaluated, wall, sps, stopped,
              switched, success)  # fmt: skip
    print(f"done {core} seed {seed}: reached {run.reached}, final {run.train_return:.3f}"
          + (f"; stopped early: {stopped}" if stopped else ""), flush=True)  # fmt: skip
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="MiniGrid-DoorKey-5x5-v0")
    parser.add_argument(
        "--cores", nargs="+", default=["rims", "lstm"],
        help="cores to train; rims-compile is rims with --rims-compile",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--total-steps", type=int, default=300_000)
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    parser.add_argument(
        "--set", type=parse_override, action="append", default=[], metavar="KEY=VALUE",
        help="a config field for every run (e.g. k=5, learning_rate=5e-4); repeatable",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="run dirs go here (default: a temp dir)")
    parser.add_argument(
        "--eval-unshifted", action="store_true",
        help="evaluate on --env without the runs' training shifts (--set shift=...)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    overrides = dict(args.set)
    try:  # a bad core, field or value is one line here, not a traceback from a worker
        from agents.config import resolve_config

        for core in args.cores:
            resolve_config(dict(env=args.env, **core_fields(core), **overrides))
    except TypeError as err:  # an unknown --set field
        parser.error(f"--set: {err}")
    except ValueError as err:  # ConfigError: its message names the flag
        parser.error(str(err))
    root = Path(args.out or tempfile.mkdtemp(prefix="learn_minigrid_"))
    threads = 1 if args.jobs > 1 else 0
    common = (args.total_steps, args.episodes)
    jobs = [
        (args.env, core, seed, *common, root / f"{core}_s{seed}", threads, overrides,
         args.eval_unshifted)
        for core in args.cores
        for seed in args.seeds
    ]  # fmt: skip
    from agents.trainer import TrainingStopped

    try:
        if args.jobs == 1:
            runs = [train_and_evaluate(*job) for job in jobs]
        else:  # fresh interpreters: no torch thread pool or compile state shared with this one
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                args.jobs, mp_context=context, initializer=stop_when_orphaned,
                initargs=(os.getpid(),),
            ) as pool:  # fmt: skip
                runs = list(pool.map(train_and_evaluate, *zip(*jobs)))
    except TrainingStopped as stop:  # a signal: the finished runs' lines are printed above
        parser.exit(stop.exit_code, f"learn_minigrid: a run stopped early: {stop}\n")
    changed = "".join(f", {k}={v}" for k, v in overrides.items())
    evaluated = "; evaluated unshifted" if args.eval_unshifted else ""
    print(f"\n{args.env}, {args.total_steps:,} steps, default config{changed}{evaluated}; "
          f"run dirs in {root}")  # fmt: skip
    print(f"{'core':<13}{'seed':>5}{'step >= 0.9':>13}{'train ret':>11}{'eval ret':>10}"
          f"{'success':>9}{'wall s':>8}{'steps/s':>9}{'switched':>10}")  # fmt: skip
    for r in runs:
        success = "-" if r.eval_success is None else f"{r.eval_success:.0%}"
        print(
            f"{r.core:<13}{r.seed:>5}{r.reached if r.reached is not None else 'never':>13}"
            f"{r.train_return:>11.3f}{r.eval_return:>10.3f}{success:>9}{r.wall_seconds:>8.0f}"
            f"{r.steps_per_second:>9.0f}{'-' if r.switched is None else r.switched:>10}"
        )
    print(
        "switched: RIMs units that top-k selection switched over the evaluation's steps (on "
        "in 5-95% of them; rims mechanisms RUN tells in which situations)"
    )
    for r in runs:
        if r.stopped:
            print(f"{r.core} seed {r.seed} stopped early (its row: the last update's return, the "
                  f"last good checkpoint's evaluation): {r.stopped}")  # fmt: skip
    for core in args.cores:
        mine = [r for r in runs if r.core == core]
        reached = sum(r.reached is not None for r in mine)
        final = sum(r.train_return >= THRESHOLD for r in mine)
        stopped = sum(r.stopped is not None for r in mine)
        median = median_reached([r.reached for r in mine])
        median_text = "never" if median is None else f"{median:,.0f} steps"
        print(f"{core}: {reached} of {len(mine)} runs reached {THRESHOLD} ({SUSTAINED} updates "
              f"in a row; median {median_text}); {final} of {len(mine)} ended at or above it"
              + (f"; {stopped} stopped early" if stopped else ""))  # fmt: skip


if __name__ == "__main__":
    main()
