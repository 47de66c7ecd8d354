"""``rims eval``: evaluate runs on env x shift rows; print a table, write JSON / CSV / a plot."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gymnasium.spaces import Dict

from agents.atomic import atomic_output
from agents.checkpoint import LoadedPolicy
from agents.config import TrainConfig
from agents.evaluate import evaluate
from envs.factory import EnvError, env_family, make_env, probe_resets
from envs.suites import SuiteRow

FIELDS = (
    "run", "checkpoint", "core", "env", "shift", "episodes", "mean_return", "ci95",
    "success_rate", "mean_length", "truncated_rate",
)  # fmt: skip


@dataclass(frozen=True)
class EvalRow:
    """One run on one env x shift. Field names are stable (JSON and CSV use them)."""

    run: str
    checkpoint: str
    core: str
    env: str
    shift: str
    episodes: int
    mean_return: float
    ci95: float | None  # None for one episode
    success_rate: float | None
    mean_length: float
    truncated_rate: float | None = None  # the share of episodes cut by the env's step limit


def env_kwargs_for(config: TrainConfig, env_id: str) -> dict:
    """A run's env settings (e.g. Atari frame stack) when ``env_id`` is of its env's family."""
    return config.env_kwargs() if env_family(env_id) == config.family else {}


def check_compatible(loaded: LoadedPolicy, row: SuiteRow) -> None:
    """``EnvError`` unless ``row``'s env makes its levels (``probe_resets``) and gives the
    observations and actions the policy takes."""
    check_row_fits(
        row, env_kwargs_for(loaded.config, row.env), loaded.observation_space,
        loaded.policy.num_actions, loaded.label,
    )  # fmt: skip


def check_row_fits(
    row: SuiteRow, env_kwargs: dict, observation_space: Dict, num_actions: int, label: str
) -> None:
    """``EnvError`` unless ``row``'s env (built with ``env_kwargs``) makes its levels
    (``probe_resets``) and gives observations of ``observation_space`` and ``num_actions``
    actions; ``label`` names the policy in the message."""
    probe_resets(row.env, row.shifts, env_kwargs)
    env = make_env(row.env, shifts=row.shifts, **env_kwargs)
    try:
        want, got = observation_space, env.observation_space
        where = f"{row.env}{' with ' + row.label if row.shifts else ''}"
        if set(want.spaces) != set(got.spaces):
            raise EnvError(
                f"{label} takes observations {sorted(want.spaces)}, "
                f"{where} gives {sorted(got.spaces)}"
            )
        for key in want.spaces:
            if want[key].shape != got[key].shape:
                raise EnvError(
                    f"{label} takes {key} of shape {want[key].shape}, "
                    f"{where} gives {got[key].shape}"
                )
        if env.action_space.n != num_actions:
            raise EnvError(f"{label} has {num_actions} actions, {where} has {env.action_space.n}")
    finally:
        env.close()


def compatible_rows(runs: Sequence[LoadedPolicy], rows: Sequence[SuiteRow]) -> list[SuiteRow]:
    """The rows every run can be evaluated on; prints one line per row left out and why (a
    game mode with another action set needs a policy trained with --full-action-space)."""
    kept = []
    for row in rows:
        try:
            for run in runs:
                check_compatible(run, row)
        except EnvError as err:
            print(f"  skipped {row.env} {row.label}: {err}")
            continue
        kept.append(row)
    if not kept:
        raise EnvError("no row of the suite fits the runs' observations and actions")
    return kept


def distinct_labels(runs: Sequence[LoadedPolicy]) -> list[str]:
    """Each run's label (its run directory's name), lengthened by parent folders where runs
    share one (``a/rims_s1`` and ``b/rims_s1``), so that each gets its own column; a run given
    twice is numbered."""

    def label_at(run: LoadedPolicy, depth: int) -> str:  # the label with ``depth`` parents
        base = run.path.parent.parent if run.path.parent.name == "checkpoints" else run.path
        return "/".join((*base.parent.parts[len(base.parent.parts) - depth :], run.label))

    distinct = list({run.path.resolve(): run for run in runs}.values())  # each file once
    labels = [run.label for run in distinct]
    for depth in range(1, 1 + max(len(run.path.parts) for run in distinct)):
        counts = Counter(labels)
        if len(counts) == len(labels):
            break
        labels = [label_at(r, depth) if counts[lab] > 1 else lab
                  for r, lab in zip(distinct, labels)]  # fmt: skip
    by_path = {run.path.resolve(): label for run, label in zip(distinct, labels)}
    seen: Counter[str] = Counter()
    numbered = []
    for run in runs:
        label = by_path[run.path.resolve()]
        seen[label] += 1
        numbered.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return numbered


def evaluate_runs(
    runs: Sequence[LoadedPolicy],
    rows: Sequence[SuiteRow],
    episodes: int,
    seed: int,
    deterministic: bool = False,
    num_envs: int = 16,
    progress: bool = True,
) -> list[EvalRow]:
    """Every run on every row; checks all pairs before evaluating any."""
    for run in runs:
        for row in rows:
            check_compatible(run, row)
    results = []
    labels = distinct_labels(runs)
    for row in rows:
        for run, label in zip(runs, labels):
            r = evaluate(run.policy, row.env, episodes, seed=seed, num_envs=num_envs,
                         deterministic=deterministic, shifts=row.shifts,
                         env_kwargs=env_kwargs_for(run.config, row.env))  # fmt: skip
            results.append(
                EvalRow(label, str(run.path), run.config.core, row.env, row.label,
                        r.episodes, r.mean_return, r.ci95, r.success_rate, r.mean_length,
                        r.truncated_rate)
            )  # fmt: skip
            if progress:
                print(f"  {label} | {row.env} {row.label}: {r.mean_return:.3f}", flush=True)
    return results


def cut_share(truncated_rate: float | None) -> str:
    """``8% cut``: the share of episodes cut by the step limit; empty where none were."""
    return f"{100 * truncated_rate:.0f}% cut" if truncated_rate else ""


def cut_text(truncated_rate: float | None) -> str:
    """A cell's `` (8% cut)`` (``cut_share``), none where none were."""
    share = cut_share(truncated_rate)
    return f" ({share})" if share else ""


def cut_note(rates: Sequence[float | None]) -> str:
    """The footer's note on what ``cut`` means, where a cell shows it (any rate above 0)."""
    return "; cut: episodes truncated by the env's step limit" if any(rates) else ""


def format_table(results: Sequence[EvalRow]) -> str:
    """Rows env x shift, one column per run: ``mean ± ci95``, the success rate, and the share
    of episodes truncated where there are any."""
    cell = {(r.run, r.env, r.shift): r for r in results}

    def text(r: EvalRow) -> str:
        success = "" if r.success_rate is None else f" {100 * r.success_rate:3.0f}%"
        ci = "n/a" if r.ci95 is None else f"{r.ci95:.3f}"  # n/a: one episode
        return f"{r.mean_return:.3f} ± {ci}{success}{cut_text(r.truncated_rate)}"

    runs = list(dict.fromkeys(r.run for r in results))
    keys = list(dict.fromkeys((r.env, r.shift) for r in results))
    texts = {k: {run: text(cell[(run, *k)]) for run in runs if (run, *k) in cell} for k in keys}
    episodes = sorted({r.episodes for r in results})
    footer = (
        f"mean return ± 95% CI over {'/'.join(map(str, episodes))} episodes; "
        "% = success rate where the env defines one"
    ) + cut_note([r.truncated_rate for r in results])
    return "\n".join([*aligned_table(runs, texts), footer])


def aligned_table(
    columns: Sequence[str], texts: dict[tuple[str, str], dict[str, str]]
) -> list[str]:
    """Lines of a table whose rows are env x shift (the keys of ``texts``, in order) and whose
    columns are ``columns``; ``texts[(env, shift)][column]`` is a cell, ``-`` where missing."""
    keys = list(texts)
    env_w = max(len("env"), *(len(e) for e, _ in keys))
    shift_w = max(len("shift"), *(len(s or "-") for _, s in keys))
    col_w = [max(len(c), *(len(texts[k].get(c, "-")) for k in keys)) for c in columns]
    head = (
        f"{'env':<{env_w}}  {'shift':<{shift_w}}  "
        + "  ".join(f"{c:<{w}}" for c, w in zip(columns, col_w)).rstrip()
    )
    lines = [head, "-" * len(head)]
    for env, shift in keys:
        cells = "  ".join(f"{texts[(env, shift)].get(c, '-'):<{w}}" for c, w in zip(columns, col_w))
        lines.append(f"{env:<{env_w}}  {shift or '-':<{shift_w}}  {cells}".rstrip())
    return lines


def write_json(rows: Sequence[Any], path: Path) -> None:
    """Rows (dataclasses: ``EvalRow``, ``agents.pooled.PooledRow``, ``MechanismReport``) as a
    JSON list, written atomically (as are the CSV and the plots: a failed write leaves the file
    as it was)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


def write_csv(rows: Sequence[Any], path: Path, fields: Sequence[str] = FIELDS) -> None:
    """Rows (dataclasses) as CSV with the columns ``fields`` (other fields are left out)."""
    with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))


def plot(results: Sequence[EvalRow], path: Path, title: str = "") -> None:
    """Grouped bars: one group per env x shift, one colour per run, 95% CI error bars."""
    bars = {
        (r.run, (r.env, r.shift)): (r.mean_return, r.ci95 or 0.0, r.ci95 or 0.0, ())
        for r in results
    }
    bar_chart(bars, path, title, "mean return (95% CI)")


Bar = tuple[float, float, float, Sequence[float]]
"""A bar's height, its error below and above, and points to mark on it (none: ``()``)."""


def bar_chart(
    bars: dict[tuple[str, tuple[str, str]], Bar],
    path: Path,
    title: str,
    ylabel: str,
    reference: float | None = None,
) -> None:
    """Grouped bars keyed by (column, (env, shift)): one group per env x shift, one colour per
    column, in the order they come; a dashed line at ``reference`` where given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(dict.fromkeys(column for column, _ in bars))
    keys = list(dict.fromkeys(key for _, key in bars))
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(keys) * max(1, len(columns) / 2)), 4.0))
    for i, column in enumerate(columns):
        xs = [j + (i - (len(columns) - 1) / 2) * width for j in range(len(keys))]
        present = [(x, bars[(column, k)]) for x, k in zip(xs, keys) if (column, k) in bars]
        ax.bar([x for x, _ in present], [b[0] for _, b in present], width, capsize=3,
               yerr=[[b[1] for _, b in present], [b[2] for _, b in present]],
               label=column, color=f"C{i}")  # fmt: skip
        dots = [(x, p) for x, b in present for p in b[3]]
        if dots:
            ax.scatter([x for x, _ in dots], [p for _, p in dots], s=9, color="black", zorder=3)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
    labels = [f"{env.replace('MiniGrid-', '')}\n{shift or 'no shift'}" for env, shift in keys]
    ax.set_xticks(range(len(keys)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "evaluation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
