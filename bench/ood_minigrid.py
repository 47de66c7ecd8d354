"""Train RIMs and LSTM on DoorKey-5x5 (several seeds, CPU), evaluate the ``doorkey`` suite.

Writes ``bench/results/ood_doorkey.md`` (a markdown table: mean over seeds of each run's mean
return, ± the standard deviation across seeds) and ``bench/results/ood_doorkey.png`` (grouped
bars, 95% CI across seeds). Runs go one after another (default config, only --env, --core,
--seed and --total-steps set). ``--env`` and ``--suite`` train and evaluate another family.

    python bench/ood_minigrid.py                        # 3 seeds x {rims, lstm}, 300k steps
    python bench/ood_minigrid.py --runs-dir DIR --reuse   # evaluate DIR/<core>_s<seed> if done
    python bench/ood_minigrid.py --seeds 1 --episodes 20 --total-steps 50000   # a quick look
    python bench/ood_minigrid.py --cores rims rims-spatial lstm --name ood_doorkey_spatial
    python bench/ood_minigrid.py --env MiniGrid-MemoryS7-v0 --suite memory --cores rims lstm ff \
        --total-steps 1000000 --runs-dir DIR --reuse --name ood_memory   # runs of learn_minigrid
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np

from agents.checkpoint import load_checkpoint, load_policy
from agents.config import resolve_config
from agents.report import EvalRow, evaluate_runs, plot
from agents.trainer import train
from envs.suites import load_suite

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = {  # the public reimplementation's README (its model has a known defect)
    "rims": (0.90, 0.68, 0.38, 0.18),
    "lstm": (0.90, 0.63, 0.35, 0.12),
}


# What each name given to --cores trains: config fields over the Minigrid preset.
VARIANTS: dict[str, dict] = {
    "rims": {"core": "rims"},
    "lstm": {"core": "lstm"},
    "gru": {"core": "gru"},
    "ff": {"core": "ff"},  # memoryless
    "rims-spatial": {"core": "rims", "rims_spatial": True},  # attention over the view's cells
    # Controls for rims-spatial: the same full-size cell encoder, flattened into one vector.
    "rims-cells": {"core": "rims", "encoder": "minigrid-cells"},
    "lstm-cells": {"core": "lstm", "encoder": "minigrid-cells"},
}


def finished(run_dir: Path, fields: dict, seed: int, total_steps: int) -> bool:
    """Whether ``run_dir`` holds a run with these config fields (env included) and seed that
    reached ``total_steps``."""
    path = run_dir / "checkpoints" / "latest.pt"
    if not path.exists():
        return False
    ckpt = load_checkpoint(path)
    config = ckpt["config"]
    same = all(config.get(k) == v for k, v in fields.items()) and config["seed"] == seed
    return same and ckpt["global_step"] >= total_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="MiniGrid-DoorKey-5x5-v0", help="the env trained on")
    parser.add_argument("--suite", default="doorkey", help="the suite evaluated (name or file)")
    parser.add_argument("--cores", nargs="+", default=["rims", "lstm"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--total-steps", type=int, default=300_000)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--runs-dir", default=None, help="keep the runs here (default: temp)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="evaluate runs in --runs-dir that reached --total-steps instead of retraining",
    )
    parser.add_argument("--out", default=str(RESULTS), help="folder for the table and plot")
    parser.add_argument("--name", default="ood_doorkey", help="file name of the table and plot")
    args = parser.parse_args()
    root = Path(args.runs_dir or tempfile.mkdtemp(prefix="ood_minigrid_"))
    suite = load_suite(args.suite)
    per_core: dict[str, list[list[EvalRow]]] = {}
    for core in args.cores:
        for seed in args.seeds:
            run_dir = root / f"{core}_s{seed}"
            fields = {"env": args.env, **VARIANTS[core]}
            if not (args.reuse and finished(run_dir, fields, seed, args.total_steps)):
                train(
                    resolve_config(
                        dict(
                            **fields,
                            seed=seed,
                            total_steps=args.total_steps,
                            run_dir=str(run_dir),
                            overwrite=True,
                            progress=False,
                        )
                    )
                )
            rows = evaluate_runs([load_policy(run_dir)], suite.rows, args.episodes, seed=0)
            per_core.setdefault(core, []).append(rows)

    labels = [row.label or "(train)" for row in suite.rows]
    aggregate = []
    lines = [
        f"{args.env} -> {suite.name} suite; {len(args.seeds)} seed(s) x "
        f"{args.total_steps:,} steps, {args.episodes} episodes per cell; mean return, "
        "mean ± std over seeds",
        "",
        "| core | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for core, runs in per_core.items():
        means = np.array([[r.mean_return for r in rows] for rows in runs])  # (seeds, rows)
        mu, sd = means.mean(0), means.std(0)
        lines.append(f"| {core} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in zip(mu, sd))
                     + " |")  # fmt: skip
        for j, row in enumerate(suite.rows):
            ci = 1.96 * means[:, j].std(ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else 0.0
            aggregate.append(EvalRow(core, "", core, row.env, row.label, args.episodes,
                                     float(mu[j]), float(ci), None, 0.0))  # fmt: skip
    for core, ref in REFERENCE.items() if suite.name == "doorkey" else ():
        lines.append(f"| {core} (public reimpl.) | " + " | ".join(f"{v:.2f}" for v in ref) + " |")
    table = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(table)
    plot(aggregate, out / f"{args.name}.png", f"trained on {args.env}, evaluated on {suite.name}")
    print(table)
    print(f"wrote {out / args.name}.md and .png; runs in {root}")


if __name__ == "__main__":
    main()
