"""An ``AsyncVectorEnv`` that does not wait forever on a stuck worker.

Gymnasium's ``AsyncVectorEnv.step`` waits without a limit, so an env worker that hangs (a
deadlocked simulator, a worker stopped by a debugger) would stall training silently. Here every
step and reset waits at most ``timeout`` seconds, then raises ``EnvTimeout``; closing the envs
after that terminates the workers instead of waiting for them too. ``vector_env`` is where the
factory and the Atari path choose between it and an inline ``SyncVectorEnv``.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv


class EnvTimeout(RuntimeError):
    """An env worker did not answer within the timeout."""


class WatchedAsyncVectorEnv(AsyncVectorEnv):
    """``AsyncVectorEnv`` whose steps and resets fail after ``timeout`` seconds (None: never)."""

    def __init__(self, env_fns: Any, timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(env_fns, **kwargs)
        self.timeout = timeout
        self.stuck = False  # a worker missed the timeout: close terminates the workers

    def step_wait(self, timeout: float | None = None):  # type: ignore[override]
        return self._wait("step", super().step_wait, timeout)

    def reset_wait(self, timeout: float | None = None, *args: Any, **kwargs: Any):  # type: ignore[override]
        return self._wait("reset", super().reset_wait, timeout, *args, **kwargs)

    def _wait(self, what: str, wait: Any, timeout: float | None, *args: Any, **kwargs: Any):
        """``wait(limit, ...)``, where a missed limit raises ``EnvTimeout`` and marks the workers
        stuck."""
        limit = self.timeout if timeout is None else timeout
        try:
            return wait(limit, *args, **kwargs)
        except multiprocessing.TimeoutError:
            self.stuck = True
            raise EnvTimeout(
                f"an env worker did not answer a {what} within {limit:g} s "
                "(hung?; --env-timeout sets the limit)"
            ) from None

    def close_extras(self, timeout: float | None = None, terminate: bool = False) -> None:
        super().close_extras(timeout, terminate or self.stuck)


def vector_env(env_fns: Any, asynchronous: bool, timeout: float | None = None) -> VectorEnv:
    """``SAME_STEP``-autoreset vector env of ``env_fns``: in subprocesses watched with
    ``timeout`` when ``asynchronous``, else inline."""
    if asynchronous:
        return WatchedAsyncVectorEnv(env_fns, timeout, autoreset_mode=AutoresetMode.SAME_STEP)
    return SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
