"""Shared test set-up."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from policies import actor_critic, rims, rims_grad


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
