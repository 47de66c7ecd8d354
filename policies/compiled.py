"""``torch.compile`` for the small per-step functions of a time loop, eager as the fallback.

A RIMs step is some 30 small ops forward and 60 backward; at recurrent-PPO sizes their dispatch,
not their arithmetic, is the cost. Inductor fuses the elementwise ones into a few kernels (C++
loops on a CPU, Triton on a GPU) and leaves the matmuls to the usual libraries. A function is
compiled on its first call, for static shapes, and again for each new combination of shapes,
strides and grad settings: acting (one step per call, batch = envs) and learning (batch =
sequences per minibatch) each get their own kernels. Dynamo keeps 8 versions per function by
default and runs any further ones eagerly; the first compile raises that to ``RECOMPILE_LIMIT``.
Where compiling fails (no C++ compiler, an op this torch cannot compile) the eager function runs
instead, after one warning; it computes the same values.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

import torch

RECOMPILE_LIMIT = 64
"""Compiled versions dynamo keeps per function (its default, 8, is reached by a benchmark that
times several batch sizes, each for acting and for learning)."""


class CompiledStep:
    """``fn`` compiled with ``torch.compile`` on first use, or ``fn`` itself once that failed.

    ``fn`` must be pure (its results depend on its arguments only, and it mutates none of them),
    so that running it again eagerly after a failed compile is safe.
    """

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn, self.name = fn, name
        self.compiled: Callable[..., Any] | None = None
        self.failed = False

    def __call__(self, *args: Any) -> Any:
        if self.failed:
            return self.fn(*args)
        if self.compiled is None:
            # Late: 2 s of imports that `--help`, eval and record never need. Once imported,
            # it is there for the except clause below on every later call too.
            dynamo = importlib.import_module("torch._dynamo")
            try:
                config = dynamo.config
                config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
                # Static shapes: a handful of fixed shapes per run, and the kernels
                # specialised to them are faster than dynamic-shape ones (0.71x against 0.83x
                # eager at the Minigrid training shape on the CPU). One whole graph or none:
                # a graph break would fall back to eager (with the warning) rather than
                # silently split the step.
                self.compiled = torch.compile(self.fn, dynamic=False, fullgraph=True)
            except RuntimeError as err:  # e.g. dynamo does not support this Python
                return self._fall_back(err, *args)
        try:
            return self.compiled(*args)
        except torch._dynamo.exc.TorchDynamoException as err:  # compiling (not running) failed
            return self._fall_back(err, *args)

    def _fall_back(self, err: Exception, *args: Any) -> Any:
        self.failed = True
        warnings.warn(
            f"torch.compile failed for the {self.name} ({error_summary(err)}); "
            "running it eagerly from now on",
            RuntimeWarning,
            stacklevel=3,
        )
        return self.fn(*args)


def error_summary(err: BaseException, limit: int = 200) -> str:
    """``TypeName: the message's first line`` (at most ``limit`` characters of it), for the
    one-line warning of a speed path that failed and falls back to eager code."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:limit] if text else ''}"
