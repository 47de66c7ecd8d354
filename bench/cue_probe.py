"""Is the cue still in the recurrent state where a MemoryEnv policy fails? A linear probe.

Where a run trained on MemoryS7 loses the cue on a long hallway, either the state no longer holds
it (the memory faded) or it holds it and the policy does not read it there (the readout fails),
or the agent never saw it. This plays a run's episodes on each given hallway and notes whether
the agent saw the cue and how far it walked back toward it. It keeps the core's state at every
step after the cue was first in view, and fits a logistic-regression probe for the cue (key or
ball) on half of the episodes, scored on the other half, at each distance from the junction
where the agent must turn. It also scores, on each longer hallway, the probe fitted at the
junction of the first (is the cue written the same way there?), and, for RIMs, a probe on each
mechanism's state alone. Accuracies are balanced over the two cues (0.5 is chance).

    python bench/cue_probe.py RUN [RUN ...] [--sizes 7 21] [--episodes 128]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.checkpoint import CheckpointError, LoadedPolicy, load_policy  # noqa: E402
from agents.config import ConfigError  # noqa: E402
from agents.evaluate import evaluate  # noqa: E402
from agents.mechanisms import minigrid_situation, sub_envs  # noqa: E402
from agents.report import env_kwargs_for  # noqa: E402
from envs.factory import EnvError  # noqa: E402
from envs.shifts import ShiftError  # noqa: E402
from policies.actor_critic import ActResult  # noqa: E402

CUES = ("key", "ball")
# Cells from the junction (where the agent turns to one object) to the agent, as bins.
DISTANCE_BINS = ((0, 0), (1, 2), (3, 6), (7, 12), (13, 99))
# The column the agent starts in, as bins (MemoryEnv starts it anywhere up to the junction;
# the hallways of sizes 7, 9 and 11 end in columns 4, 6 and 8).
START_BINS = ((1, 4), (5, 8), (9, 12), (13, 99))
# Steps since the cue was first in view, as bins.
AGE_BINS = ((0, 4), (5, 9), (10, 14), (15, 19), (20, 29), (30, 99))


@dataclass
class Episode:
    """One episode: its cue, how it ended, and its steps after the cue was first in view (none
    where the agent never saw it)."""

    cue: int  # index into CUES
    start: int  # the column the agent started in (the cue is in column 1)
    lowest: int  # the lowest column the agent reached (start - lowest: cells walked back)
    outcome: str = ""
    states: list[np.ndarray] = field(default_factory=list)  # each (S,): the core's state
    distances: list[int] = field(default_factory=list)  # cells from the junction, per step

    @property
    def seen(self) -> bool:
        return bool(self.states)


class StateRecorder:
    """A ``StepObserver`` keeping each episode's cue and outcome, and the core's state at each
    step once the cue has been in view."""

    def __init__(self) -> None:
        self.episodes: list[Episode] = []
        self._open: dict[int, Episode | None] = {}

    def start(self, num_envs: int, shifts: Sequence[tuple[str, str]]) -> None:
        self._open = {i: None for i in range(num_envs)}  # an episode opens at its first step

    def before_step(self, envs: Any, act: ActResult, info: dict[str, Any]) -> None:
        singles = sub_envs(envs)
        if singles is None:
            raise ValueError("the probe reads each env's grid: it needs in-process envs")
        # each part (B, ...) -> (B, -1), side by side -> (B, S)
        states = torch.cat([part.flatten(1) for part in act.state], 1).double().cpu().numpy()
        for i, env in enumerate(singles):
            grid_env = env.unwrapped
            situation = minigrid_situation(grid_env)  # MemoryEnv's: the cue, and whether in view
            episode = self._open[i]
            if episode is None:
                column = int(grid_env.agent_pos[0])
                episode = self._open[i] = Episode(CUES.index(situation["cue"]), column, column)
            episode.lowest = min(episode.lowest, int(grid_env.agent_pos[0]))
            if episode.seen or situation["cue in view"] == "yes":
                junction = grid_env.success_pos[0]  # the column of both objects' cells
                episode.states.append(states[i])
                episode.distances.append(int(junction - grid_env.agent_pos[0]))

    def episode_end(self, env_index: int, counted: bool, outcome: str) -> None:
        episode, self._open[env_index] = self._open[env_index], None
        if counted and episode is not None:
            episode.outcome = outcome
            self.episodes.append(episode)


@dataclass(frozen=True)
class Probe:
    """A logistic-regression probe: features standardised with the training set's moments."""

    mean: torch.Tensor  # (S,)
    scale: torch.Tensor  # (S,)
    weight: torch.Tensor  # (S,)
    bias: torch.Tensor  # ()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(N, S)`` -> ``(N,)`` 0/1."""
        z = (torch.from_numpy(x) - self.mean) / self.scale
        return ((z @ self.weight + self.bias) > 0).long().numpy()


def fit_probe(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 200) -> Probe:
    """Fit on ``x`` ``(N, S)`` float64 and ``y`` ``(N,)`` 0/1, the two classes weighted equally,
    with an L2 penalty on the weights (full-batch L-BFGS)."""
    features = torch.from_numpy(x)
    labels = torch.from_numpy(y).double()
    mean, scale = features.mean(0), features.std(0).clamp(min=1e-6)
    z = (features - mean) / scale
    share = labels.mean().clamp(1e-6, 1 - 1e-6)
    weights = torch.where(labels > 0, 0.5 / share, 0.5 / (1 - share))  # balanced classes
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        logits = z @ weight + bias
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, weights)
        value = value + l2 * weight.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return Probe(mean, scale, weight.detach(), bias.detach())


MIN_STEPS = 20  # steps of each cue a score needs


def enough(y: np.ndarray) -> bool:
    """Whether cues ``y`` ``(N,)`` hold at least ``MIN_STEPS`` steps of each cue."""
    return min(np.sum(y == 0), np.sum(y == 1)) >= MIN_STEPS


def balanced_accuracy(predicted: np.ndarray, y: np.ndarray) -> float | None:
    """The mean over the two cues of the share predicted right; None where either cue has fewer
    than ``MIN_STEPS`` steps."""
    if not enough(y):
        return None
    return float(np.mean([(predicted[y == c] == c).mean() for c in (0, 1)]))


def fitted_probe(x: np.ndarray, y: np.ndarray) -> Probe | None:
    """A probe fitted on states ``x`` ``(N, S)`` with cues ``y`` ``(N,)``; None with too few
    steps of a cue."""
    return fit_probe(x, y) if enough(y) else None


def probe_score(probe: Probe | None, x: np.ndarray, y: np.ndarray) -> float | None:
    """``probe``'s balanced accuracy on states ``x`` ``(N, S)`` with cues ``y`` ``(N,)``; None
    without a probe or with too few steps of a cue."""
    return balanced_accuracy(probe.predict(x), y) if probe is not None and enough(y) else None


def steps_where(
    episodes: Sequence[Episode],
    keep: Callable[[int], bool],
    columns: slice | np.ndarray = slice(None),
    by_age: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The states ``(N, S')`` (``columns`` of each) and cues ``(N,)`` of the steps whose distance
    from the junction (or with ``by_age`` whose steps since the cue was first seen) ``keep``
    accepts."""
    x, y = [], []
    for episode in episodes:
        for age, (state, distance) in enumerate(zip(episode.states, episode.distances)):
            if keep(age if by_age else distance):
                x.append(state[columns])
                y.append(episode.cue)
    if not x:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
    return np.stack(x), np.array(y, dtype=np.int64)  # N of (S',) -> (N, S')


def held_out_accuracy(
    episodes: Sequence[Episode],
    keep: Callable[[int], bool],
    columns: slice | np.ndarray = slice(None),
) -> float | None:
    """Fit on the even-numbered episodes, score on the odd ones (whole episodes apart: a step
    and the next are nearly the same state); None where a half has too few steps of a cue."""
    probe = fitted_probe(*steps_where(episodes[0::2], keep, columns))
    return probe_score(probe, *steps_where(episodes[1::2], keep, columns))


def unit_columns(loaded: LoadedPolicy) -> list[np.ndarray] | None:
    """For RIMs, the columns of each mechanism's state in a recorded state vector (its ``h``,
    and its ``c`` for LSTM cells, which follow all of ``h``); None for other cores."""
    core = loaded.policy.core
    units = getattr(core, "num_units", None)
    if units is None:
        return None
    size = core.hidden_size
    parts = len(core.initial_state(1))
    return [np.r_[tuple(slice(p * units * size + u * size, p * units * size + (u + 1) * size)
                        for p in range(parts))] for u in range(units)]  # fmt: skip


def record(loaded: LoadedPolicy, size: int, episodes: int, seed: int) -> list[Episode]:
    """``episodes`` episodes of the run's memory env at ``size`` x ``size``, actions sampled as
    ``rims eval`` samples them."""
    recorder = StateRecorder()
    env_id = loaded.config.env
    shifts = (("size", str(size)),)
    evaluate(loaded.policy, env_id, episodes, seed, 16, shifts=shifts,
             env_kwargs=env_kwargs_for(loaded.config, env_id), observer=recorder)  # fmt: skip
    return recorder.episodes


def success_rate(episodes: Sequence[Episode], cue: int, seen: bool) -> float | None:
    """The success rate of the episodes with ``cue`` whose cue was ``seen`` (or not); None where
    there are fewer than 5."""
    outcomes = [e.outcome == "success" for e in episodes if e.cue == cue and e.seen == seen]
    return float(np.mean(outcomes)) if len(outcomes) >= 5 else None


def agreement(probe: Probe | None, episodes: Sequence[Episode]) -> float | None:
    """How often ``probe``'s reading of the state at an episode's last step at the junction
    names the object the policy then chose (the cue where it succeeded, the other where it
    failed), over the episodes that saw the cue and reached the junction; None under 20."""
    read, chose = [], []
    for e in episodes:
        at_junction = [s for s, d in zip(e.states, e.distances) if d == 0]
        if at_junction and e.outcome in ("success", "failure"):
            read.append(at_junction[-1])
            chose.append(e.cue if e.outcome == "success" else 1 - e.cue)
    if probe is None or len(read) < 20:
        return None
    return float(np.mean(probe.predict(np.stack(read)) == np.array(chose)))


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(title: str, heads: Sequence[str], rows: dict[int, Sequence[float | None]]) -> None:
    """``title``, then a row of ``heads`` and one row a hallway size, in columns 7 wide."""
    print(f"  {title}")
    print("  " + "".join(f"{h:>7}" for h in ("size", *heads)))
    for size, values in rows.items():
        print("  " + f"{size:>7}" + "".join(f"{cell(v):>7}" for v in values))


def bin_names(bins: Sequence[tuple[int, int]]) -> list[str]:
    return [f"{lo}" if lo == hi else f"{lo}-{hi}" if hi < 99 else f"{lo}+" for lo, hi in bins]


def by_start(
    episodes: Sequence[Episode],
    value: Callable[[Episode], float],
    statistic: Callable[[list[float]], Any],
) -> list[float | None]:
    """For each of ``START_BINS``, ``statistic`` of ``value`` over the episodes that started in
    its columns; None where fewer than 5 did."""
    values = [[value(e) for e in episodes if lo <= e.start <= hi] for lo, hi in START_BINS]
    return [float(statistic(v)) if len(v) >= 5 else None for v in values]


def report(loaded: LoadedPolicy, sizes: Sequence[int], episodes: int, seed: int) -> None:
    played = {size: record(loaded, size, episodes, seed) for size in sizes}
    first = fitted_probe(*steps_where(played[sizes[0]], lambda d: d == 0))

    print(f"{loaded.label} ({loaded.config.core}), {episodes} episodes a size:")
    behaviour, starts, walks, probes, ages, units = {}, {}, {}, {}, {}, {}
    columns = unit_columns(loaded)  # for RIMs, each mechanism's part of a state
    for size, eps in played.items():
        behaviour[size] = [
            float(np.mean([e.outcome == "success" for e in eps])),
            float(np.mean([e.seen for e in eps])),  # the share of episodes whose cue was in view
            *(success_rate(eps, cue, seen) for seen in (True, False) for cue in (0, 1)),
        ]
        starts[size] = by_start(eps, lambda e: e.seen, np.mean)
        walks[size] = by_start(eps, lambda e: e.start - e.lowest, np.median)
        probes[size] = [
            *(held_out_accuracy(eps, lambda d, lo=lo, hi=hi: lo <= d <= hi)
              for lo, hi in DISTANCE_BINS),
            probe_score(first, *steps_where(eps, lambda d: d == 0)),
            agreement(first, eps),
        ]  # fmt: skip
        ages[size] = [
            probe_score(
                first, *steps_where(eps, lambda a, lo=lo, hi=hi: lo <= a <= hi, by_age=True)
            )
            for lo, hi in AGE_BINS
        ]
        if columns is not None:
            units[size] = [held_out_accuracy(eps, lambda d: d == 0, c) for c in columns]
    table("success; the share of episodes whose cue was seen; success by cue when seen / not",
          ["all", "seen", "key", "ball", "key", "ball"], behaviour)  # fmt: skip
    table("the share of episodes whose cue was seen, by the column the agent started in",
          [f"x={b}" for b in bin_names(START_BINS)], starts)  # fmt: skip
    table("the median number of cells walked back toward the cue, by the start's column",
          [f"x={b}" for b in bin_names(START_BINS)], walks)  # fmt: skip
    table(f"the cue read from the state (held out), by cells to the junction; then by the "
          f"size-{sizes[0]} probe at d=0, and how often its reading there names the object the "
          "policy chose", [f"d={b}" for b in bin_names(DISTANCE_BINS)]
          + [f"{sizes[0]}:d=0", "agrees"], probes)  # fmt: skip
    table(f"the size-{sizes[0]} probe at d=0, by steps since the cue was first seen",
          bin_names(AGE_BINS), ages)  # fmt: skip
    if units:
        table("each mechanism's state alone at d=0 (held out)", [f"u{u}" for u in range(len(
            next(iter(units.values()))))], units)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_OR_CHECKPOINT")
    parser.add_argument("--sizes", type=int, nargs="+", default=[7, 21], help="hallway sizes")
    parser.add_argument("--episodes", type=int, default=128, help="episodes per size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        runs = [load_policy(run) for run in args.runs]
    except CheckpointError as err:
        print(f"cue_probe: {err}", file=sys.stderr)
        return 2
    for loaded in runs:
        if not loaded.config.env.startswith("MiniGrid-Memory"):
            print(f"cue_probe: {loaded.label} was trained on {loaded.config.env}, not on a "
                  "MiniGrid-Memory env", file=sys.stderr)  # fmt: skip
            return 2
    try:
        for loaded in runs:
            report(loaded, args.sizes, args.episodes, args.seed)
    except (ConfigError, EnvError, ShiftError) as err:  # a size it cannot draw (even, small)
        print(f"cue_probe: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
