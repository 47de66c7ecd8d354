"""Piecewise-linear schedules over a run's steps, written ``STEP:VALUE,STEP:VALUE,...``
(``--shift-schedule 0:1,500000:1,1000000:0``): the value at a step is interpolated linearly
between the points around it and held constant before the first point and after the last."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class ScheduleError(ValueError):
    """A schedule that does not parse, or whose steps or values are out of range; one line."""


@dataclass(frozen=True)
class Schedule:
    """Points ``(step, value)`` with steps strictly increasing."""

    steps: tuple[int, ...]
    values: tuple[float, ...]

    @classmethod
    def parse(cls, text: str, low: float = 0.0, high: float = 1.0) -> Schedule:
        """``"0:1,500000:0"`` -> ``Schedule((0, 500000), (1.0, 0.0))``; ``ScheduleError`` unless
        every point is ``STEP:VALUE`` with an integer step >= 0 above the last and a value in
        ``[low, high]``."""
        steps: list[int] = []
        values: list[float] = []
        for point in text.split(","):
            step_text, sep, value_text = point.strip().partition(":")
            try:
                step, value = int(step_text.replace("_", "")), float(value_text)
            except ValueError:
                step, value = -1, float("nan")
            if not sep or step < 0 or not low <= value <= high:
                raise ScheduleError(
                    f"takes points STEP:VALUE with an integer step >= 0 and a value in "
                    f"[{low:g}, {high:g}], got {point.strip()!r}"
                )
            if steps and step <= steps[-1]:
                raise ScheduleError(f"steps must increase from point to point, got {text!r}")
            steps.append(step)
            values.append(value)
        return cls(tuple(steps), tuple(values))

    def __call__(self, step: int) -> float:
        """The value at ``step``."""
        return float(np.interp(step, self.steps, self.values))


@dataclass
class ScheduleStart:
    """Where a schedule's step 0 lies in a run: at the run's start, or, with ``after_return``,
    at the end of the first update after which the mean return of the last ``window`` training
    episodes reaches ``after_return`` (a curriculum that moves on once its first levels are
    learned). Until then the schedule stays at its step 0."""

    after_return: float | None = None
    start: int | None = 0  # the run's step at the schedule's step 0; None while waiting
    window: int = 100

    @classmethod
    def new_run(cls, after_return: float | None, window: int = 100) -> ScheduleStart:
        """A new run's: waiting where ``after_return`` is given, else at step 0."""
        return cls(after_return, None if after_return is not None else 0, window)

    def step(self, global_step: int) -> int:
        """The schedule's step at the run's ``global_step`` (0 while waiting)."""
        return 0 if self.start is None else global_step - self.start

    def reached(self, global_step: int, recent_returns: Sequence[float]) -> float | None:
        """Start the schedule at ``global_step`` if it waits and ``recent_returns`` (the last
        training episodes' returns, newest last) hold a full window whose mean reaches
        ``after_return``. That mean where it started now, else None."""
        if self.start is not None or self.after_return is None:
            return None
        last = list(recent_returns)[-self.window :]
        mean = float(np.mean(last)) if len(last) == self.window else None
        if mean is None or mean < self.after_return:
            return None
        self.start = global_step
        return mean
