"""Evaluation during training (``--eval-every``): the training env and the rows of
``--eval-suite``, every N updates and after the last, so that out-of-distribution returns can be
followed over a run (``rims plot RUN --tag eval/size=8/return``).

Each evaluation plays the same episodes (one seed for all of them, disjoint from training's), so
that a curve moves with the policy, not with the levels drawn; it leaves the training RNGs and
the policy's mode as they were, so a run learns the same with or without it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from statistics import fmean

from gymnasium.spaces import Dict

from agents.config import TrainConfig
from agents.distributed import Distributed, any_rank, gather_lists
from agents.evaluate import EvalResult, evaluate
from agents.report import check_row_fits, cut_share, env_kwargs_for
from envs.factory import EnvError
from envs.mixture import UNSHIFTED
from envs.suites import GENERATED, SuiteRow, suite_rows
from policies.actor_critic import ActorCritic


@dataclass(frozen=True)
class EvalTarget:
    """One env x shift row and the name its scalars are logged under: ``eval/<name>/return``,
    or ``eval/return`` where the name is empty (the run's target, ``TrainConfig.target_row``)."""

    row: SuiteRow
    name: str

    @property
    def is_target(self) -> bool:
        """The run's target: its training env with its ``--shift``, or without where its
        ``--shift-schedule`` ends at 0 (its scores choose ``best.pt``)."""
        return not self.name

    def tag(self, metric: str) -> str:
        return f"eval/{metric}" if self.is_target else f"eval/{self.name}/{metric}"


@dataclass(frozen=True)
class RowResult:
    target: EvalTarget
    result: EvalResult


def tag_name(row: SuiteRow, training_env: str) -> str:
    """The row's shifts (``size=8``, several joined by ``,``), prefixed by its env where that is
    not the training env; characters a TensorBoard tag should not hold become ``_``."""
    shifts = ",".join(f"{k}={v}" for k, v in row.shifts)
    name = shifts if row.env == training_env else f"{row.env}:{shifts}" if shifts else row.env
    return re.sub(r"[^A-Za-z0-9_.,:=+-]+", "_", name)


def eval_targets(
    config: TrainConfig, observation_space: Dict, num_actions: int
) -> list[EvalTarget]:
    """What ``config``'s ``--eval-every`` evaluates: the run's target (``target_row``), then the
    other part of what it trains on where a ``--shift-schedule`` shares its episodes out (the
    env with its ``--shift`` where the schedule ends at 0, else ``other_row``), then each row of
    ``--eval-suite`` (``$RUN`` is the training env's id, unshifted; a row given twice counts
    once; the unshifted env of a run trained on shifts is named ``unshifted``).
    ``observation_space`` and ``num_actions`` are the policy's, built for the training env. Every
    other row is checked as ``rims eval`` checks it (its levels can be made, its observations and
    actions fit the policy): ``EnvError`` names the first that does not, except that rows of the
    generated ``atari-modes`` suite that do not fit are left out with a line, as ``rims eval``
    does."""
    if not config.eval_every:
        return []
    own, trained = config.target_row, [config.train_row]
    if config.share_schedule is not None:  # its other episodes: unshifted, or --other-shift
        trained.append(config.other_row)
    rows = [own, *trained]  # one row without a schedule; the target's row comes once
    if config.eval_suite is not None:
        rows += suite_rows(config.eval_suite, [config.env])[1]
    targets = []
    for row in dict.fromkeys(rows):
        if row not in trained:  # checked when the policy was built for them (and the target)
            try:
                check_row_fits(row, env_kwargs_for(config, row.env), observation_space,
                               num_actions, "the policy")  # fmt: skip
            except EnvError as err:
                if config.eval_suite not in GENERATED or not row.shifts:
                    raise EnvError(f"--eval-suite: {err}") from None
                print(f"rims: --eval-suite leaves out {row.label}: {err}", file=sys.stderr)
                continue
        # The target is named ""; another row without shifts (the unshifted env) "unshifted".
        name = "" if row == own else tag_name(row, config.env) or UNSHIFTED
        targets.append(EvalTarget(row, name))
    return targets


class TrainingEvaluator:
    """Evaluates a training policy on its targets when ``due``. Under ``torchrun`` every rank
    plays its share of each row's episodes (with seeds of its own) and the returns are gathered,
    so that no rank waits on another past the collectives' timeout. A row whose env fails (on
    any rank) is reported in one line and left out of later evaluations; training goes on."""

    def __init__(
        self, config: TrainConfig, targets: list[EvalTarget], world: Distributed | None = None
    ) -> None:
        self.config, self.world = config, world or Distributed()
        self.targets = list(targets)

    @property
    def evaluates_target(self) -> bool:
        """Whether the run's target is still evaluated (it chooses ``best.pt`` then)."""
        return any(target.is_target for target in self.targets)

    def due(self, update: int, last_update: int) -> bool:
        every = self.config.eval_every
        return bool(self.targets) and every > 0 and (update % every == 0 or update == last_update)

    def evaluate(
        self, policy: ActorCritic, should_stop: Callable[[], bool] = lambda: False
    ) -> list[RowResult]:
        """Every rank must call it (it gathers). Where ``should_stop()`` turns true (a stop
        signal) before a row, the evaluation is given up and nothing is returned, so that the
        run stops without waiting for the remaining rows."""
        config, world = self.config, self.world
        share = config.eval_episodes // world.world_size
        share += int(world.rank < config.eval_episodes % world.world_size)
        results = []
        for target in list(self.targets):
            if any_rank(should_stop(), world):
                return []
            row, played, failure = target.row, EvalResult([], []), None
            if share:
                try:
                    played = evaluate(
                        policy, row.env, share, seed=config.seed + world.rank * config.num_envs,
                        num_envs=config.num_envs, shifts=row.shifts,
                        env_kwargs=env_kwargs_for(config, row.env),
                        keep_batch=policy.builds_per_batch,
                    )  # fmt: skip
                except EnvError as err:
                    failure = err
            if any_rank(failure is not None, world):
                self.targets.remove(target)
                if failure is not None:
                    print(f"rims: --eval-every: {failure}; left out of later evaluations",
                          file=sys.stderr, flush=True)  # fmt: skip
                continue
            returns = gather_lists(played.returns, world)
            lengths = gather_lists(played.lengths, world)
            truncated = gather_lists(played.truncated or [], world)
            results.append(RowResult(target, EvalResult.of(row.env, returns, lengths, truncated)))
        return results


def summary_line(step: int, results: list[RowResult], seconds: float) -> str:
    """``eval at step 40,960 (32 episodes a row, 3.1 s): return 0.912 (100%) | size=8 0.551
    (58%, 12% cut) | ...``: success rates where the env defines them, and the share of episodes
    cut by the env's step limit where any were."""

    def text(r: RowResult) -> str:
        success = r.result.success_rate
        notes = [] if success is None else [f"{100 * success:.0f}%"]
        cut = cut_share(r.result.truncated_rate)
        notes += [cut] if cut else []
        notes_text = f" ({', '.join(notes)})" if notes else ""
        return f"{r.target.name or 'return'} {r.result.mean_return:.3f}{notes_text}"

    episodes = min(r.result.episodes for r in results)
    count = f"{episodes} episode{'s' if episodes != 1 else ''} a row"
    head = f"eval at step {step:,} ({count}, {seconds:.1f} s): "
    return head + " | ".join(text(r) for r in results)


def mean_shifted_return(results: list[RowResult]) -> float | None:
    """Mean return over the rows other than the run's target (None if there are none)."""
    shifted = [r.result.mean_return for r in results if not r.target.is_target]
    return fmean(shifted) if shifted else None
