"""A shift given several values (``size=5,6,7``) makes a mixture: one env per combination of the
values, and each episode is played in one of them, drawn at its reset. Training on a mixture
trains on a distribution of levels (grid sizes, noise levels, ...); evaluating on one measures
the mean over it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from envs.shifts import ShiftError

Combination = tuple[tuple[str, str], ...]


def combinations(shifts: Sequence[tuple[str, str]]) -> list[Combination]:
    """``[("size", "5,6"), ("noise", "0.1")]`` -> ``[(("size", "5"), ("noise", "0.1")),
    (("size", "6"), ("noise", "0.1"))]``: every combination of the listed values, in the order
    given; a single combination (the shifts themselves) where no value lists several."""
    options = [[(key, v.strip()) for v in value.split(",")] for key, value in shifts]
    return [tuple(c) for c in itertools.product(*options)]


class ShiftMixture(gym.Wrapper):
    """Members (one env id under different shifts, with the same observation and action
    spaces); each reset draws one uniformly and the episode is played in it. The draws come from
    a generator seeded by ``reset(seed=s)``, which also seeds every member (each from its own
    stream of ``s``), so a seed fixes the whole sequence of episodes. ``unwrapped`` is the
    member playing now."""

    def __init__(self, members: Sequence[gym.Env], labels: Sequence[str]) -> None:
        first = members[0]
        for member, label in zip(members[1:], labels[1:]):
            if (member.observation_space, member.action_space) != (
                first.observation_space,
                first.action_space,
            ):
                for env in members:
                    env.close()
                raise ShiftError(
                    f"a shift's values must give the same observations and actions: "
                    f"{labels[0]} and {label} do not"
                )
        super().__init__(first)
        self.members = list(members)
        self.labels = list(labels)
        self._draws = np.random.default_rng()
        self._member_seeds: dict[int, int] = {}  # seeds not yet given to their member

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._draws = np.random.default_rng(seed)
            streams = np.random.SeedSequence(seed).spawn(len(self.members))
            self._member_seeds = {i: int(s.generate_state(1)[0]) for i, s in enumerate(streams)}
        drawn = self._draw()
        self.env = self.members[drawn]
        return self.env.reset(seed=self._member_seeds.pop(drawn, None), options=options)

    def _draw(self) -> int:
        """The index of the member the next episode is played in."""
        return int(self._draws.integers(len(self.members)))

    @property
    def label(self) -> str:
        """The shifts of the member playing now (``size=6``)."""
        return self.labels[self.members.index(self.env)]

    def close(self) -> None:
        for member in self.members:
            member.close()


UNSHIFTED = "unshifted"  # the name of an env without shifts beside shifted ones (ShiftShare's
# member; the tag of a suite's unshifted row in evaluation during training)


class ShiftShare(ShiftMixture):
    """The env with its shifts and the env without them, or with other shifts (either perhaps
    a mixture): each reset plays the shifted one with probability ``share``.
    ``set_shift_share`` changes it between episodes, so that a run can move from shifted levels
    to the env's own, or from one mixture to another (a curriculum: ``--shift-schedule``).
    ``labels``: the shifted member's, then the other's (``UNSHIFTED`` for the env alone)."""

    def __init__(
        self, shifted: gym.Env, other: gym.Env, labels: tuple[str, str], share: float
    ) -> None:
        super().__init__([shifted, other], list(labels))
        self.set_shift_share(share)

    def set_shift_share(self, share: float) -> None:
        """Episodes drawn from now on are shifted with probability ``share`` (in [0, 1])."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"a share of shifted episodes is in [0, 1], got {share}")
        self.share = share

    def _draw(self) -> int:
        return 0 if self._draws.random() < self.share else 1
