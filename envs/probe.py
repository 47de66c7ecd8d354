"""Tools to report an env that fails in one line: a time limit for a call that may never return,
and a summary of an exception raised inside an env's code.

Minigrid draws each level at reset, so a setting its level generator cannot honour shows only
there: a bare assertion (``MiniGrid-MemoryS7-v0`` with an even size), an error from the RNG
(Fetch with no objects), or a loop that never ends (PutNear with one object waits for a second
one). ``envs.factory.probe_resets`` uses these to turn each into one line.
"""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class TimeLimitReached(Exception):
    """The block under ``time_limit`` ran past its limit."""


_limits = threading.local()  # the limit of the block a thread runs under ``time_limit``


class _LimitPassed(TimeLimitReached):
    """What a watcher thread raises in the thread it watches: Python makes the exception from
    its class there, with no arguments, so the message comes from that thread's limit."""

    def __init__(self) -> None:
        super().__init__(f"still running after {_limits.seconds:g} s")


def _alarm_available() -> bool:
    """``SIGALRM`` can time this thread: it is the main one, on a system with interval timers."""
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeLimitReached`` inside the block once it has run ``seconds`` (wall clock).

    It stops code that returns to Python now and then (a level generator's loop does). On the
    main thread of a system with interval timers it uses ``SIGALRM``, which also ends a wait in
    a system call; a timer already set (pytest-timeout's) is put back afterwards with the time it
    has left. Elsewhere (another thread, Windows) a watcher thread raises the exception in the
    block's thread (``PyThreadState_SetAsyncExc``), which takes effect when that thread next
    runs Python code."""
    if _alarm_available():
        with _alarm(seconds):
            yield
    else:
        with _watched(seconds):
            yield


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: object) -> None:
        raise TimeLimitReached(f"still running after {seconds:g} s")

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:
            left = previous_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), previous_interval)


@contextmanager
def _watched(seconds: float) -> Iterator[None]:
    target = ctypes.c_ulong(threading.get_ident())
    finished = threading.Event()

    def watch() -> None:
        if not finished.wait(seconds):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(target, ctypes.py_object(_LimitPassed))

    outer, _limits.seconds = getattr(_limits, "seconds", None), seconds
    watcher = threading.Thread(target=watch, name="time-limit", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        watcher.join()
        # A limit passed just as the block ended must not surface later: withdraw it.
        ctypes.pythonapi.PyThreadState_SetAsyncExc(target, None)
        _limits.seconds = outer


def failure_summary(err: BaseException, module: str | None = None, limit: int = 200) -> str:
    """``TypeName: first line of the message (file:line)``: where it was raised, as a path from
    ``site-packages``. With ``module`` (the env class's, e.g. ``minigrid.envs.fetch``) the
    place is its deepest line in that module, if it has one (where the level generator asked
    for the impossible), else the deepest Python line. A bare ``assert`` has no message, so the
    failing line's source stands in for it: ``AssertionError (minigrid/envs/memory.py:102:
    assert height % 2 == 1)``."""
    text = str(err).strip()
    summary = type(err).__name__ + (f": {text.splitlines()[0][:limit]}" if text else "")
    frames = traceback.extract_tb(err.__traceback__)
    source = getattr(sys.modules.get(module or ""), "__file__", None)
    ours = [f for f in frames if source is not None and f.filename == source]
    python = [f for f in frames if f.filename.endswith(".py")]
    chosen = ours or python or frames
    if not chosen:
        return summary
    frame = chosen[-1]
    where = f"{_short_path(frame.filename)}:{frame.lineno}"
    if not text and frame.line and frame is frames[-1]:
        where += f": {frame.line.strip()}"
    return f"{summary} ({where})"


def _short_path(filename: str) -> str:
    """A path from the package's folder on: ``.../site-packages/minigrid/x.py`` ->
    ``minigrid/x.py``; a file elsewhere gives its name."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1 :])
    return Path(filename).name
