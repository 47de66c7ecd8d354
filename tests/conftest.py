"""Shared test set-up."""

from __future__ import annotations

import os

import pytest
import torch
import torch._dynamo

from policies import actor_critic, rims, rims_grad


def usable_cpus() -> int:
    """The CPUs this process may run on (fewer than the machine's in a container or under
    ``taskset``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's default): one pytest-xdist worker per usable CPU."""
    return usable_cpus()


def share_the_cpus_among_workers() -> None:
    """Under pytest-xdist, each worker's torch (and each process a test starts, through
    ``OMP_NUM_THREADS``) gets its share of the CPUs, not all of them: two workers with two
    threads each on two cores oversubscribe them, and small ops then wait on each other.
    ``OMP_NUM_THREADS`` set by the user is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = max(1, usable_cpus() // workers)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


share_the_cpus_among_workers()


@pytest.fixture(autouse=True)
def compiled_for_real():
    """Code compiled with ``RIMs.compile_steps`` / ``ActorCritic.compile_act`` must really be
    compiled: no silent fallback to eager, neither ours (``CompiledStep`` after a failed
    compile) nor dynamo's (past its recompile limit). Each test starts with no compiled code,
    so that guard lists stay short (they are checked on every call) and no test depends on
    what another compiled."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    wrappers = (rims._COMPILED_STEP, rims_grad._COMPILED_STEP_BACKWARD, actor_critic._COMPILED_ACT)
    assert not any(w.failed for w in wrappers)
