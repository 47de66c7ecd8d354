"""Does plain ``rims train`` solve DoorKey-5x5 on this CPU, and how does the LSTM core compare?

Trains each core with the default config (only --core, --seed and --total-steps set), then
evaluates the final policy on 100 fresh episodes. Prints, per run: the first step at which the
mean training return of an update reached 0.9, the final last-100 training return, the evaluation
return, wall time and steps/s. Cores run one after the other so they do not share the CPU.

    python bench/learn_minigrid.py                       # rims and lstm, seed 1, 300k steps
    python bench/learn_minigrid.py --cores rims --seeds 1 2 3 --total-steps 300000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.checkpoint import load_policy
from agents.config import resolve_config
from agents.evaluate import evaluate
from agents.trainer import train


def first_step_at(run_dir: Path, threshold: float) -> int | None:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    for event in acc.Scalars("charts/episodic_return"):
        if event.value >= threshold:
            return event.step
    return None


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
    parser.add_argument("--out", default=None, help="run dirs go here (default: a temp dir)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="learn_minigrid_"))
    rows = []
    for core in args.cores:
        for seed in args.seeds:
            run_dir = root / f"{core}_s{seed}"
            config = resolve_config(
                dict(env=args.env, core=core.removesuffix("-compile"), seed=seed,
                     rims_compile=core.endswith("-compile"), total_steps=args.total_steps,
                     run_dir=str(run_dir), overwrite=True, progress=False)
            )  # fmt: skip
            start = time.perf_counter()
            result = train(config)
            wall = time.perf_counter() - start
            policy = load_policy(run_dir).policy
            ev = evaluate(policy, args.env, args.episodes, seed=seed)
            rows.append((core, seed, first_step_at(run_dir, 0.9), result.mean_recent_return,
                         ev.mean_return, wall, result.global_step / result.seconds))  # fmt: skip
            print(f"done {core} seed {seed}: {rows[-1]}", flush=True)
    print(f"\n{args.env}, {args.total_steps:,} steps, default config; run dirs in {root}")
    print(f"{'core':<13}{'seed':>5}{'step >= 0.9':>13}{'train ret':>11}{'eval ret':>10}"
          f"{'wall s':>8}{'steps/s':>9}")  # fmt: skip
    for core, seed, hit, train_ret, eval_ret, wall, sps in rows:
        print(f"{core:<13}{seed:>5}{hit if hit is not None else 'never':>13}"
              f"{train_ret or 0:>11.3f}{eval_ret:>10.3f}{wall:>8.0f}{sps:>9.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
