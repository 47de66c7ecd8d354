"""An ``AsyncVectorEnv`` that does not wait forever on a stuck worker.

Gymnasium's ``AsyncVectorEnv.step`` waits without a limit, so an env worker that hangs (a
deadlocked simulator, a worker stopped by a debugger) would stall training silently. Here every
step and reset waits at most ``timeout`` seconds, then raises ``EnvTimeout``; closing the envs
after that terminates the workers instead of waiting for them too.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from gymnasium.vector import AsyncVectorEnv


class EnvTimeout(RuntimeError):
    """An env worker did not answer within the timeout."""


class WatchedAsyncVectorEnv(AsyncVectorEnv):
    """``AsyncVectorEnv`` whose steps and resets fail after ``timeout`` seconds (None: never)."""

    def __init__(self, env_fns: Any, timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(env_fns, **kwargs)
        self.timeout = timeout
        self.stuck = False  # a worker missed the timeout: close terminates the workers

    def _limit(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def step_wait(self, timeout: float | None = None):  # type: ignore[override]
        try:
            return super().step_wait(self._limit(timeout))
        except multiprocessing.TimeoutError:
            self.stuck = True
            raise EnvTimeout(
                f"an env worker did not answer a step within {self._limit(timeout):g} s "
                "(hung?; --env-timeout sets the limit)"
            ) from None

    def reset_wait(self, timeout: float | None = None, *args: Any, **kwargs: Any):  # type: ignore[override]
        try:
            return super().reset_wait(self._limit(timeout), *args, **kwargs)
        except multiprocessing.TimeoutError:
            self.stuck = True
            raise EnvTimeout(
                f"an env worker did not answer a reset within {self._limit(timeout):g} s "
                "(hung?; --env-timeout sets the limit)"
            ) from None

    def close_extras(self, timeout: float | None = None, terminate: bool = False) -> None:
        super().close_extras(timeout, terminate or self.stuck)
