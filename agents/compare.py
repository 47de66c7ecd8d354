"""``rims compare`` (and ``rims eval --pool-seeds`` with several configs): how likely one config
is to beat another, from each seed's mean return.

The statistic is rliable's probability of improvement (Agarwal et al., 2021): on one env x shift
row, P(A > B) is the chance that a seed of A scores higher than a seed of B, ties counting half
(the Mann-Whitney U statistic over the product of seeds); over several rows it is the mean of
the rows' probabilities. It needs no normalisation of returns across rows, and 0.5 means "no
difference". Its 95% interval is a stratified percentile bootstrap: each row's seeds of A and of
B are resampled on their own, as rliable does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path

import numpy as np

from agents.config import ConfigError
from agents.pooled import (
    BOOTSTRAP_SAMPLES,
    PooledRow,
    percentile_interval,
    returns_by_config,
)
from agents.report import bar_chart
from envs.jsonfile import NotJson, read_json

ALL_ROWS = "mean over rows"
"""The env name of a comparison that averages every row both configs were evaluated on."""

FIELDS = ("config", "baseline", "env", "shift", "rows", "probability", "ci_low", "ci_high")
"""The CSV's columns (JSON holds the same fields)."""


@dataclass(frozen=True)
class Comparison:
    """P(``config`` > ``baseline``) on one env x shift, or on ``ALL_ROWS``."""

    config: str
    baseline: str
    env: str
    shift: str
    rows: int  # the rows averaged: 1, or every row both configs share
    probability: float
    ci_low: float | None  # 95% stratified bootstrap interval; None where a side has one seed
    ci_high: float | None


def probability_of_improvement(
    config: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]]
) -> float:
    """The mean over rows of P(a seed of ``config`` > a seed of ``baseline``), ties counting
    half; ``config[m]`` and ``baseline[m]`` are the seeds' scores on row m."""
    return float(np.mean([_row_probability(np.asarray(a), np.asarray(b))
                          for a, b in zip(config, baseline, strict=True)]))  # fmt: skip


def _row_probability(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(a > b) over the last two axes' product: ``a`` (..., n), ``b`` (..., m) -> (...)."""
    # (..., n, 1) against (..., 1, m) -> (..., n, m) wins (1), ties (0.5) and losses (0)
    wins = (a[..., :, None] > b[..., None, :]) + 0.5 * (a[..., :, None] == b[..., None, :])
    return wins.mean(axis=(-2, -1))


def bootstrap_interval(
    config: Sequence[Sequence[float]],
    baseline: Sequence[Sequence[float]],
    level: float = 0.95,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of ``probability_of_improvement`` under a stratified bootstrap: in
    every resample each row's seeds of each side are drawn with replacement from that row's
    seeds. None where a row has a single seed on a side, whose spread is unknown."""
    if min(len(s) for side in (config, baseline) for s in side) < 2:
        return None
    rng = np.random.default_rng(seed)
    total = np.zeros(samples)
    for a, b in zip(config, baseline, strict=True):
        a_draws = np.asarray(a)[rng.integers(0, len(a), size=(samples, len(a)))]  # (samples, n)
        b_draws = np.asarray(b)[rng.integers(0, len(b), size=(samples, len(b)))]  # (samples, m)
        total += _row_probability(a_draws, b_draws)  # (samples,)
    return percentile_interval(total / len(config), level)


def compare(rows: Sequence[PooledRow]) -> list[Comparison]:
    """Every pair of configs (each config against every later one, in the order they first
    appear), on each env x shift both were evaluated on and on the mean over those rows."""
    by_config = returns_by_config(rows)
    names = list(by_config)
    comparisons = []
    for i, name in enumerate(names):
        for baseline in names[i + 1 :]:
            shared = [key for key in by_config[name] if key in by_config[baseline]]
            ours = [by_config[name][key] for key in shared]
            theirs = [by_config[baseline][key] for key in shared]
            for key, a, b in zip(shared, ours, theirs):
                comparisons.append(_comparison(name, baseline, key, [a], [b]))
            if len(shared) > 1:
                comparisons.append(_comparison(name, baseline, (ALL_ROWS, ""), ours, theirs))
    return comparisons


def _comparison(
    name: str,
    baseline: str,
    key: tuple[str, str],
    ours: Sequence[Sequence[float]],
    theirs: Sequence[Sequence[float]],
) -> Comparison:
    ci = bootstrap_interval(ours, theirs)
    return Comparison(
        name, baseline, *key, len(ours), probability_of_improvement(ours, theirs),
        None if ci is None else ci[0], None if ci is None else ci[1],
    )  # fmt: skip


def format_table(comparisons: Sequence[Comparison]) -> str:
    """One line per pair of configs, one column per env x shift (then the mean over rows)."""
    one_env = len({c.env for c in comparisons if c.env != ALL_ROWS}) == 1

    def column(c: Comparison) -> str:
        if c.env == ALL_ROWS or not one_env:
            return f"{c.env} {c.shift}".strip()
        return c.shift or "unshifted"

    def text(c: Comparison) -> str:
        ci = "[n/a]" if c.ci_low is None else f"[{c.ci_low:.2f}, {c.ci_high:.2f}]"
        return f"{c.probability:.2f} {ci}"

    ordered = sorted(comparisons, key=lambda c: c.env == ALL_ROWS)  # stable: the mean last
    columns = list(dict.fromkeys(column(c) for c in ordered))
    cells: dict[str, dict[str, str]] = {}
    for c in comparisons:
        cells.setdefault(f"{c.config} > {c.baseline}", {})[column(c)] = text(c)
    pairs = list(cells)
    pair_w = max(len("A > B"), *(len(p) for p in pairs))
    widths = [max(len(col), *(len(cells[p].get(col, "-")) for p in pairs)) for col in columns]
    head = f"{'A > B':<{pair_w}}  " + "  ".join(f"{c:<{w}}" for c, w in zip(columns, widths))
    lines = [head.rstrip(), "-" * len(head.rstrip())]
    for pair in pairs:
        row = "  ".join(f"{cells[pair].get(c, '-'):<{w}}" for c, w in zip(columns, widths))
        lines.append(f"{pair:<{pair_w}}  {row}".rstrip())
    env = "" if not one_env else f" on {next(c.env for c in comparisons if c.env != ALL_ROWS)}"
    footer = (
        f"P(A > B){env}: the probability that a seed of A has a higher mean return than a seed "
        "of B (ties count half; 0.5: no difference) [95% stratified bootstrap interval over "
        "seeds; n/a: a single seed]"
    )
    return "\n".join([*lines, footer])


def plot(comparisons: Sequence[Comparison], path: Path) -> None:
    """Grouped bars: one group per env x shift (then the mean over rows), one colour per pair of
    configs, the bootstrap interval as error bars and a dashed line at 0.5 (no difference)."""
    bars = {
        (
            f"{c.config} > {c.baseline}",
            ("mean over", "all rows") if c.env == ALL_ROWS else (c.env, c.shift),
        ): (
            c.probability,
            0.0 if c.ci_low is None else c.probability - c.ci_low,
            0.0 if c.ci_high is None else c.ci_high - c.probability,
            (),
        )
        for c in sorted(comparisons, key=lambda c: c.env == ALL_ROWS)  # the mean last
    }
    title = "probability of improvement"
    bar_chart(bars, path, title, "P(A > B)\n(95% stratified bootstrap interval)", reference=0.5)


def read_pooled(path: Path) -> list[PooledRow]:
    """The rows of a ``rims eval --pool-seeds --json`` file; ``ConfigError`` naming the file
    where it is not one."""
    try:
        data = read_json(path)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror})") from None
    except NotJson as err:
        raise ConfigError(f"{path}: not JSON ({err})") from None
    names = [f.name for f in fields(PooledRow)]
    # fields with a default (``interval``) may be missing: files written before them
    required = [f.name for f in fields(PooledRow) if f.default is MISSING]
    if not isinstance(data, list) or not all(
        isinstance(d, dict) and set(required) <= set(d) for d in data
    ):
        raise ConfigError(f"{path}: not a 'rims eval --pool-seeds --json' file")
    rows = []
    for d in data:
        if not all(isinstance(d[n], str) for n in ("config", "env", "shift")) or not isinstance(
            d["runs"], list
        ):
            raise ConfigError(f"{path}: not a 'rims eval --pool-seeds --json' file")
        returns = d["run_returns"]
        if (
            not isinstance(returns, list)
            or not returns
            or not all(isinstance(v, int | float) for v in returns)
        ):
            raise ConfigError(f"{path}: run_returns of {d['config']!r} is not a list of numbers")
        rows.append(PooledRow(**{
            **{n: d[n] for n in names if n in d}, "runs": tuple(d["runs"]),
            "run_returns": tuple(returns),
        }))  # fmt: skip
    return rows


def read_labelled(argument: str) -> list[PooledRow]:
    """The rows of ``FILE``, or of ``LABEL=FILE`` with each config renamed ``LABEL: config``
    (files of separate studies often share a config name, such as ``rims``). An argument that
    names an existing file is that file, '=' or not."""
    label, separator, path = argument.partition("=")
    if not separator or Path(argument).exists():
        return read_pooled(Path(argument))
    if not label.strip():
        raise ConfigError(f"{argument}: give a label before '=' (LABEL=FILE), or no '='")
    return [replace(r, config=f"{label}: {r.config}") for r in read_pooled(Path(path))]


def merge(files: Sequence[Sequence[PooledRow]]) -> list[PooledRow]:
    """The rows of several files as one list; ``ConfigError`` where two files hold one config
    on one env x shift (its seeds would be compared twice, or with themselves)."""
    seen: set[tuple[str, str, str]] = set()
    merged = []
    for rows in files:
        keys = {(r.config, r.env, r.shift) for r in rows}
        repeated = keys & seen
        if repeated:
            config, env, shift = sorted(repeated)[0]
            where = f"{env} {shift}".strip()
            raise ConfigError(
                f"config {config!r} on {where} is in more than one file; to compare them, "
                "label each file (LABEL=FILE)"
            )
        seen |= keys
        merged.extend(rows)
    return merged
