"""``rims plot``: learning curves from runs' TensorBoard events, seeds of one config pooled."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.checkpoint import CheckpointError
from agents.config import NOT_LEARNED

IGNORED = NOT_LEARNED | {"seed"}
"""Settings that do not tell configs apart: runs that differ only in these are its seeds."""


def read_curve(run_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one scalar tag; ``CheckpointError`` if the run has none."""
    if not any(run_dir.glob("events.out.tfevents.*")):
        raise CheckpointError(f"{run_dir} holds no TensorBoard events")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    if tag not in tags:
        raise CheckpointError(
            f"{run_dir} has no scalar {tag!r} (it has: {', '.join(sorted(tags)) or 'none'})"
        )
    events = acc.Scalars(tag)
    return np.array([e.step for e in events]), np.array([e.value for e in events])


def group_label(run_dir: Path) -> str:
    """Runs with the same config but for the seed (and run bookkeeping) share a label."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return run_dir.name
    key = {k: v for k, v in config.items() if k not in IGNORED}
    return f"{config.get('core')} on {config.get('env')}#{json.dumps(key, sort_keys=True)}"


def plot_curves(runs: Sequence[Path], out: Path, tag: str = "charts/episodic_return") -> dict:
    """Mean curve per config with the min-max band over its seeds. Returns ``{label: seeds}``.
    A run with no point of ``tag`` yet (no episode has ended) is left out with a line saying
    so; ``CheckpointError`` if no run has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    problems = []
    for run in runs:
        try:
            curve = read_curve(run, tag)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        groups.setdefault(group_label(run), []).append(curve)
    if not groups:
        more = f" (and {len(problems) - 1} more run(s) like it)" if len(problems) > 1 else ""
        raise CheckpointError(problems[0] + more)
    for problem in problems:
        print(f"  left out: {problem}")
    names = {label: label.split("#")[0] for label in groups}
    if len(set(names.values())) < len(names):  # same core and env, other settings differ
        names = {label: f"{name} ({i})" for i, (label, name) in enumerate(names.items())}
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curves in groups.items():
        end = min(steps[-1] for steps, _ in curves)
        grid = np.linspace(0, end, 200)
        values = np.stack([np.interp(grid, steps, vals) for steps, vals in curves])  # (seeds, 200)
        line = ax.plot(grid, values.mean(0), label=f"{names[label]} ({len(curves)} seed(s))")
        if len(curves) > 1:
            ax.fill_between(grid, values.min(0), values.max(0), alpha=0.2,
                            color=line[0].get_color())  # fmt: skip
    ax.set_xlabel("agent steps")
    ax.set_ylabel(tag)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return {names[label]: len(curves) for label, curves in groups.items()}
