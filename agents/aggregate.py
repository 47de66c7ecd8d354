"""One figure per config over a suite's rows: the interquartile mean (IQM) and the mean of every
run's mean return on every row, with 95% stratified bootstrap intervals (rliable; Agarwal et al.,
2021), printed by ``rims eval --pool-seeds`` and ``rims compare``.

The IQM is the mean of the middle half of the seeds x rows scores (a quarter cut from each end,
as ``scipy.stats.trim_mean(x, 0.25)``): less thrown by one outlying run than the mean, and with
far less spread than the median over few runs. Scores are pooled across rows only where they are
on one scale: every row is a Minigrid env (returns in [0, 1]) or every row is one env (shifts of
it). Atari games' scores are not, and no game-normalised score is attempted here.

Every config is aggregated over the same rows (those every config was evaluated on), so the
figures compare. Each resample of the bootstrap draws every row's seeds with replacement from
that row's seeds, config by config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agents.pooled import (
    BOOTSTRAP_SAMPLES,
    PooledRow,
    percentile_interval,
    returns_by_config,
)
from envs.factory import env_family


@dataclass(frozen=True)
class Aggregate:
    """One config over ``rows`` env x shift rows: IQM and mean of its seeds x rows scores."""

    config: str
    rows: int
    scores: int  # seeds x rows pooled
    iqm: float
    iqm_low: float | None  # 95% stratified bootstrap interval; None where a row has one seed
    iqm_high: float | None
    mean: float
    mean_low: float | None
    mean_high: float | None


def interquartile_mean(scores: np.ndarray) -> np.ndarray:
    """The mean of the middle half along the last axis: ``(..., n)`` -> ``(...)``; cuts
    ``int(n / 4)`` scores from each end, as ``scipy.stats.trim_mean(scores, 0.25, axis=-1)``."""
    n = scores.shape[-1]
    cut = int(0.25 * n)
    return np.sort(scores, axis=-1)[..., cut : n - cut].mean(axis=-1)


def not_on_one_scale(rows: Sequence[PooledRow]) -> str | None:
    """Why the rows' returns cannot be pooled into one figure, or None where they can."""
    envs = {r.env for r in rows}
    if len(envs) == 1 or all(env_family(env) == "minigrid" for env in envs):
        return None
    return (
        f"the rows' envs ({', '.join(sorted(envs))}) score on different scales; only Minigrid "
        "rows, or the shifts of one env, are pooled"
    )


def shared_rows(rows: Sequence[PooledRow]) -> list[tuple[str, str]]:
    """The env x shift rows every config in ``rows`` was evaluated on, in their first order."""
    by_config = returns_by_config(rows).values()
    return [key for key in dict.fromkeys((r.env, r.shift) for r in rows)
            if all(key in returns for returns in by_config)]  # fmt: skip


def aggregate(
    rows: Sequence[PooledRow], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> list[Aggregate]:
    """Each config's IQM and mean over the rows every config shares (two or more rows; none
    otherwise, and none where ``not_on_one_scale``), configs in their first order."""
    keys = shared_rows(rows)
    if len(keys) < 2 or not_on_one_scale([r for r in rows if (r.env, r.shift) in keys]):
        return []
    return _over_rows(rows, keys, samples, seed)


def _over_rows(
    rows: Sequence[PooledRow], keys: Sequence[tuple[str, str]], samples: int, seed: int
) -> list[Aggregate]:
    """``aggregate`` over the env x shift rows ``keys``, which every config has."""
    results = []
    for config, returns in returns_by_config(rows).items():
        per_row = [np.asarray(returns[key], dtype=float) for key in keys]
        scores = np.concatenate(per_row)  # (seeds x rows,)
        iqm_ci = mean_ci = None
        if min(len(s) for s in per_row) >= 2:
            rng = np.random.default_rng(seed)
            # Each row's seeds drawn from that row's: rows x (samples, n_m) -> (samples, sum n_m)
            draws = np.concatenate(
                [s[rng.integers(0, len(s), size=(samples, len(s)))] for s in per_row], axis=1
            )
            iqm_ci = percentile_interval(interquartile_mean(draws), 0.95)
            mean_ci = percentile_interval(draws.mean(axis=1), 0.95)
        results.append(Aggregate(
            config, len(keys), len(scores), float(interquartile_mean(scores)),
            *(iqm_ci or (None, None)), float(scores.mean()), *(mean_ci or (None, None)),
        ))  # fmt: skip
    return results


def format_table(aggregates: Sequence[Aggregate]) -> str:
    """One line per config: IQM and mean with their intervals."""

    def text(value: float, low: float | None, high: float | None) -> str:
        return f"{value:.3f} " + ("[n/a]" if low is None else f"[{low:.3f}, {high:.3f}]")

    cells = [(a.config, text(a.iqm, a.iqm_low, a.iqm_high), text(a.mean, a.mean_low, a.mean_high))
             for a in aggregates]  # fmt: skip
    widths = [max(len(head), *(len(c[i]) for c in cells))
              for i, head in enumerate(("config", "IQM", "mean"))]  # fmt: skip
    lines = ["  ".join(f"{h:<{w}}" for h, w in zip(("config", "IQM", "mean"), widths)).rstrip()]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(f"{c:<{w}}" for c, w in zip(cell, widths)).rstrip() for cell in cells]
    first = aggregates[0]
    lines.append(
        f"over the {first.rows} rows every config was evaluated on: the interquartile mean and "
        "the mean of every seed's mean return on every row [95% stratified bootstrap interval; "
        "n/a: a row with one seed]"
    )
    return "\n".join(lines)


def summary(rows: Sequence[PooledRow]) -> str | None:
    """What ``rims eval --pool-seeds`` and ``rims compare`` print about the rows together:
    the table, the reason there is none, or None where fewer than two rows are shared."""
    keys = shared_rows(rows)
    if len(keys) < 2:
        return None
    reason = not_on_one_scale([r for r in rows if (r.env, r.shift) in keys])
    if reason is not None:
        return f"no IQM over the rows: {reason}"
    return format_table(_over_rows(rows, keys, BOOTSTRAP_SAMPLES, 0))
