"""``rims plot``: learning curves from runs' TensorBoard events, seeds of one config pooled."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.atomic import atomic_output
from agents.checkpoint import CheckpointError
from agents.groups import config_key, config_names
from envs.jsonfile import NotJson, read_json


class RunScalars:
    """One run's scalar events, read from disk once; ``CheckpointError`` if it has none."""

    def __init__(self, run_dir: Path) -> None:
        if not any(run_dir.glob("events.out.tfevents.*")):
            raise CheckpointError(f"{run_dir} holds no TensorBoard events")
        self.run_dir = run_dir
        self._events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        self._events.Reload()

    @property
    def tags(self) -> list[str]:
        """The scalar tags, in the order they were first written."""
        return list(self._events.Tags()["scalars"])

    def curve(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of one scalar tag; ``CheckpointError`` if the run has none."""
        tags = self.tags
        if tag not in tags:
            raise CheckpointError(
                f"{self.run_dir} has no scalar {tag!r} "
                f"(it has: {', '.join(sorted(tags)) or 'none'})"
            )
        events = self._events.Scalars(tag)
        return np.array([e.step for e in events]), np.array([e.value for e in events])


def scalar_tags(run_dir: Path) -> list[str]:
    """The scalar tags of a run's events, in the order they were first written;
    ``CheckpointError`` if it has no events."""
    return RunScalars(run_dir).tags


def read_curve(run_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one scalar tag; ``CheckpointError`` if the run has none."""
    return RunScalars(run_dir).curve(tag)


Loaded = list[tuple[Path, "RunScalars | CheckpointError"]]
"""Each run with its scalars, or why it has none (read once for every tag of a plot)."""


def _load(runs: Sequence[Path]) -> Loaded:
    loaded: Loaded = []
    for run in runs:
        try:
            loaded.append((run, RunScalars(run)))
        except CheckpointError as err:
            loaded.append((run, err))
    return loaded


def expand_tags(runs: Sequence[Path], patterns: Sequence[str]) -> list[str]:
    """Each pattern as it is, or, where it holds ``*``, ``?`` or ``[``, the runs' tags it
    matches (``eval/*return``: ``eval/return``, ``eval/size=8/return``, ...), in the order the
    runs wrote them; each tag once. ``CheckpointError`` for a pattern that matches nothing."""
    return _expand_tags(_load(runs), patterns)


def _expand_tags(loaded: Loaded, patterns: Sequence[str]) -> list[str]:
    found: list[str] = []
    for _, scalars in loaded:
        if isinstance(scalars, RunScalars):  # a run without events is named by its panel
            found += [t for t in scalars.tags if t not in found]
    tags: list[str] = []
    for pattern in patterns:
        if not any(c in pattern for c in "*?["):
            matched = [pattern]
        else:
            matched = [t for t in found if fnmatch.fnmatchcase(t, pattern)]
            if not matched:
                raise CheckpointError(
                    f"no scalar of the runs matches {pattern!r} (they have: "
                    f"{', '.join(sorted(found)) or 'none'})"
                )
        tags += [t for t in matched if t not in tags]
    return tags


def run_config(run_dir: Path) -> dict | None:
    """The run's ``config.json``, or None where it has none (or an unreadable one)."""
    try:
        return read_json(run_dir / "config.json")
    except (FileNotFoundError, NotJson):
        return None


def group_label(run_dir: Path) -> str:
    """Runs with the same config but for the seed (and run bookkeeping) share a label; a run
    without a readable config is a group of its own, labelled by its folder's name."""
    return run_groups([run_dir])[0][run_dir]


def run_groups(runs: Sequence[Path]) -> tuple[dict[Path, str], dict[str, str]]:
    """Each run's ``group_label`` and each label's name: ``rims on ENV``, with the settings that
    tell it from another config of that core and env (``rims on ENV k=3``). Reads each run's
    config once."""
    configs = {run: run_config(run) for run in runs}
    labels = {run: run.name if c is None else config_key(c) for run, c in configs.items()}
    names = config_names([c for c in configs.values() if c is not None], with_env=True)
    names.update({run.name: run.name for run, c in configs.items() if c is None})
    return labels, names


def step_label(steps: float) -> str:
    """An axis label for a step count: ``400`` -> ``"400"``, ``150000`` -> ``"150k"``,
    ``1500000`` -> ``"1.5M"`` (full counts of six or more digits run into each other)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(steps) >= scale:
            return f"{steps / scale:.4g}{suffix}"
    return f"{steps:.4g}"


def plot_curves(
    runs: Sequence[Path], out: Path, tags: Sequence[str] = ("charts/episodic_return",)
) -> dict:
    """One panel per tag (patterns expanded by ``expand_tags``), each with a mean curve per
    config and the min-max band over its seeds. Returns ``{label: seeds}`` (the most seeds a
    config has in any panel). A run with no point of a tag yet (no episode has ended) is left out
    of that panel with a line saying so; ``CheckpointError`` if a panel would be empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    loaded = _load(runs)
    tags = _expand_tags(loaded, tags)
    label_of, names = run_groups(runs)
    panels = [(tag, _grouped_curves(loaded, tag, label_of)) for tag in tags]
    labels = list(dict.fromkeys(label for _, groups in panels for label in groups))
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7 if columns == 1 else 4.6 * columns,
                             4 if rows == 1 else 3.4 * rows), squeeze=False)  # fmt: skip
    colours = {label: f"C{i}" for i, label in enumerate(labels)}
    seeds: dict[str, int] = {}
    for ax, (tag, groups) in zip(axes.flat, panels):
        for label, curves in groups.items():
            seeds[names[label]] = max(seeds.get(names[label], 0), len(curves))
            legend = f"{names[label]} ({len(curves)} seed(s))"
            if len(curves) == 1:  # its own points (marked where few, e.g. evaluations)
                steps, vals = curves[0]
                ax.plot(steps, vals, color=colours[label], label=legend,
                        marker="o" if len(steps) <= 40 else None, markersize=3)  # fmt: skip
                continue
            # Where every seed has points: from the latest first point to the earliest last.
            start, end = max(st[0] for st, _ in curves), min(st[-1] for st, _ in curves)
            grid = np.linspace(start, end, 200)
            # seeds x (steps) -> (seeds, 200), each run's curve on a shared step grid
            values = np.stack([np.interp(grid, steps, vals) for steps, vals in curves])
            ax.plot(grid, values.mean(0), color=colours[label], label=legend)
            ax.fill_between(grid, values.min(0), values.max(0), alpha=0.2, color=colours[label])
        ax.set_xlabel("agent steps")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: step_label(x)))
        if len(panels) == 1:
            ax.set_ylabel(tag)
        else:
            ax.set_title(tag, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return seeds


def _grouped_curves(
    loaded: Loaded, tag: str, label_of: dict[Path, str]
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """``tag``'s curve of each run that has it, grouped by ``label_of``; prints a line for each
    run left out; ``CheckpointError`` if no run has it."""
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    problems = []
    for run, scalars in loaded:
        if isinstance(scalars, CheckpointError):  # no events at all
            problems.append(str(scalars))
            continue
        try:
            curve = scalars.curve(tag)
        except CheckpointError as err:  # no point of this tag yet
            problems.append(str(err))
            continue
        groups.setdefault(label_of[run], []).append(curve)
    if not groups:
        more = f" (and {len(problems) - 1} more run(s) like it)" if len(problems) > 1 else ""
        raise CheckpointError(problems[0] + more)
    for problem in problems:
        print(f"  left out: {problem}")
    return groups
