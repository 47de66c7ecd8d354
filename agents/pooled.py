"""``rims eval --pool-seeds``: the runs of one config (runs that differ only in seed and in
settings that do not change what is learned) pooled into one column. Each run's mean return over
its episodes is one sample; a cell is their mean over seeds with a 95% interval over seeds: by
default the percentile bootstrap (the interval rliable recommends; with few seeds it tends to be
too narrow, so the number of seeds is shown beside it), or with ``--interval t`` Student's t
interval, which assumes the seeds' returns roughly normal and widens honestly for few seeds
(with 3 seeds, mean +- 4.30 standard errors)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.checkpoint import LoadedPolicy
from agents.config import ConfigError
from agents.groups import config_key, config_names
from agents.report import EvalRow, aligned_table, bar_chart, cut_note, cut_text, write_json
from agents.report import write_csv as write_rows_csv

__all__ = ["FIELDS", "INTERVALS", "PooledRow", "bootstrap_ci", "t_interval", "t_quantile",
           "percentile_interval", "check_one_run_a_seed", "pool", "returns_by_config",
           "format_table", "write_json", "write_csv", "plot"]  # fmt: skip

FIELDS = (
    "config", "core", "env", "shift", "seeds", "episodes", "mean_return", "ci_low", "ci_high",
    "min_return", "max_return", "success_rate", "interval", "truncated_rate",
)  # fmt: skip
"""The CSV's columns; JSON adds ``runs`` and ``run_returns`` (one per seed, in the same order)."""

BOOTSTRAP_SAMPLES = 10_000
INTERVALS = {"bootstrap": "bootstrap", "t": "Student's t"}
"""``--interval`` choices: how a pooled cell's 95% interval over seeds is computed; its name."""


@dataclass(frozen=True)
class PooledRow:
    """One config on one env x shift, over its seeds. Field names are stable (JSON, CSV)."""

    config: str  # the config's name: its core and what tells it from the others
    core: str
    env: str
    shift: str
    seeds: int
    episodes: int  # a run's episodes
    mean_return: float  # mean over seeds of each run's mean return
    ci_low: float | None  # 95% interval of that mean over seeds (``interval``); None: one seed
    ci_high: float | None
    min_return: float  # the lowest run's mean return
    max_return: float
    success_rate: float | None  # mean over seeds, where the env defines success
    runs: tuple[str, ...]
    run_returns: tuple[float, ...]
    interval: str = "bootstrap"  # how ci_low, ci_high were computed: a key of INTERVALS
    truncated_rate: float | None = None  # mean over seeds of the share cut by the step limit


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the mean of ``values`` (resampled with replacement,
    ``samples`` times, from a fixed ``seed``: the same values give the same interval); None for
    fewer than two values, whose spread is unknown."""
    if len(values) < 2:
        return None
    x = np.asarray(values, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x)))
    means = x[draws].mean(axis=1)  # (samples, n) resampled values -> (samples,) means
    return percentile_interval(means, level)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student's t interval of the mean of ``values``: mean +- t * s / sqrt(n), with s the
    sample standard deviation and t the two-sided ``level`` quantile with n - 1 degrees of
    freedom; None for fewer than two values."""
    if len(values) < 2:
        return None
    x = np.asarray(values, dtype=float)
    half = t_quantile(level, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| <= t) = ``level`` for Student's T with ``df`` (>= 1) degrees of freedom
    (12.706 for df 1 at 0.95, 1.960 in the limit): bisection on the exact distribution function
    for integer degrees of freedom (Abramowitz and Stegun 26.7.3-4), so no SciPy."""
    if not 0 < level < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0 < level < 1 and df >= 1, got {level}, {df}")
    low, high = 0.0, 1.0
    while _t_central(high, df) < level:
        high *= 2
    for _ in range(200):  # far past float precision
        middle = (low + high) / 2
        low, high = (middle, high) if _t_central(middle, df) < level else (low, middle)
    return (low + high) / 2


def _t_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with integer ``df``: with theta = atan(t / sqrt(df)), a sum
    of powers of cos(theta) (Abramowitz and Stegun 26.7.3 for odd df, 26.7.4 for even)."""
    theta = np.arctan(t / np.sqrt(df))
    c2 = np.cos(theta) ** 2
    if df % 2 == 1:  # (2/pi) [theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)]
        term, total = 1.0, 0.0
        for j in range(1, (df - 1) // 2 + 1):  # terms up to cos^(df-2), i.e. df - 3 past one
            total += term
            term *= c2 * (2 * j) / (2 * j + 1)
        series = np.sin(theta) * np.cos(theta) * total if df > 1 else 0.0
        return float(2 / np.pi * (theta + series))
    term, total = 1.0, 0.0  # sin [1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...], up to cos^(df-2)
    for j in range(1, df // 2 + 1):
        total += term
        term *= c2 * (2 * j - 1) / (2 * j)
    return float(np.sin(theta) * total)


def percentile_interval(statistics: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` interval of a bootstrap's resampled ``statistics`` (samples,)."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(statistics, [tail, 100 - tail])
    return float(low), float(high)


def returns_by_config(rows: Sequence[PooledRow]) -> dict[str, dict[tuple[str, str], tuple]]:
    """Each config's seeds' returns on each of its env x shift rows: ``{config: {(env, shift):
    run_returns}}``, configs and rows in their first order."""
    by_config: dict[str, dict[tuple[str, str], tuple]] = {}
    for r in rows:
        by_config.setdefault(r.config, {})[(r.env, r.shift)] = r.run_returns
    return by_config


def check_one_run_a_seed(runs: Sequence[LoadedPolicy]) -> None:
    """``ConfigError`` if two runs are one config with one seed (the same run twice, or a run
    repeated): pooled, they would count as two independent seeds."""
    seen: dict[tuple[str, int], LoadedPolicy] = {}
    for run in runs:
        config = run.config.to_dict()
        first = seen.setdefault((config_key(config), run.config.seed), run)
        if first is not run:
            raise ConfigError(
                f"--pool-seeds: {first.path} and {run.path} are one config with seed "
                f"{run.config.seed}; give each seed once"
            )


def pool(
    runs: Sequence[LoadedPolicy], results: Sequence[EvalRow], interval: str = "bootstrap"
) -> list[PooledRow]:
    """``results`` (``evaluate_runs`` of ``runs``) pooled by config: one row per config and
    env x shift, configs in the order their first run was given; each cell's interval over
    seeds is ``interval``'s (a key of ``INTERVALS``)."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {sorted(INTERVALS)}, got {interval!r}")
    interval_of = bootstrap_ci if interval == "bootstrap" else t_interval
    configs = {str(run.path): run.config.to_dict() for run in runs}
    names = config_names(list(configs.values()))
    groups: dict[tuple[str, str, str], list[EvalRow]] = {}
    for r in results:
        groups.setdefault((config_key(configs[r.checkpoint]), r.env, r.shift), []).append(r)
    pooled = []
    for (key, env, shift), rows in groups.items():
        returns = [r.mean_return for r in rows]
        ci = interval_of(returns)
        rates = [r.success_rate for r in rows]
        cuts = [r.truncated_rate for r in rows]
        pooled.append(PooledRow(
            names[key], rows[0].core, env, shift, len(rows), rows[0].episodes,
            float(np.mean(returns)), None if ci is None else ci[0], None if ci is None else ci[1],
            min(returns), max(returns), None if None in rates else float(np.mean(rates)),
            tuple(r.run for r in rows), tuple(returns), interval,
            None if None in cuts else float(np.mean(cuts)),
        ))  # fmt: skip
    return pooled


def interval_names(rows: Sequence[PooledRow]) -> str:
    """The names of the intervals ``rows`` hold, in their first order: "bootstrap", "Student's
    t", or both joined by "or" (rows read from files of either kind)."""
    return " or ".join(INTERVALS.get(k, k) for k in dict.fromkeys(r.interval for r in rows))


def column(row: PooledRow) -> str:
    return f"{row.config} ({row.seeds} seed{'s' if row.seeds != 1 else ''})"


def format_table(rows: Sequence[PooledRow]) -> str:
    """Rows env x shift, one column per config: the mean over seeds, its interval, the mean
    success rate, and the mean share of episodes truncated where there are any."""

    def text(r: PooledRow) -> str:
        ci = "[n/a]" if r.ci_low is None else f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"
        success = "" if r.success_rate is None else f" {100 * r.success_rate:3.0f}%"
        return f"{r.mean_return:.3f} {ci}{success}{cut_text(r.truncated_rate)}"

    columns = list(dict.fromkeys(column(r) for r in rows))
    texts: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        texts.setdefault((r.env, r.shift), {})[column(r)] = text(r)
    episodes = sorted({r.episodes for r in rows})
    footer = (
        f"mean over seeds of each run's mean return ({'/'.join(map(str, episodes))} episodes a "
        f"run) [95% {interval_names(rows)} interval over seeds; n/a: one seed]; % = mean "
        "success rate"
    ) + cut_note([r.truncated_rate for r in rows])
    return "\n".join([*aligned_table(columns, texts), footer])


def write_csv(rows: Sequence[PooledRow], path: Path) -> None:
    """The scalar fields (``FIELDS``); JSON (``write_json``) holds each seed's run and return
    too."""
    write_rows_csv(rows, path, FIELDS)


def plot(rows: Sequence[PooledRow], path: Path, title: str = "") -> None:
    """Grouped bars: one group per env x shift, one colour per config, the interval over seeds
    as error bars and each seed's mean return as a dot."""
    bars = {
        (column(r), (r.env, r.shift)): (
            r.mean_return,
            0.0 if r.ci_low is None else r.mean_return - r.ci_low,
            0.0 if r.ci_high is None else r.ci_high - r.mean_return,
            r.run_returns,
        )
        for r in rows
    }
    kinds = interval_names(rows)
    bar_chart(bars, path, title, f"mean return over seeds\n(95% {kinds} interval; dots: seeds)")
