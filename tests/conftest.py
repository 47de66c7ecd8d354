"""Shared test set-up."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from policies import rims, rims_grad


@pytest.fixture(autouse=True)
def compiled_for_real():
    """Code compiled with ``RIMs.compile_steps`` must really be compiled: no silent fallback to
    eager, neither ours (``CompiledStep`` after a failed compile) nor dynamo's (past its
    recompile limit). Each test starts with no compiled code, so that guard lists stay short
    (they are checked on every call) and no test depends on what another compiled."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    assert not (rims._COMPILED_STEP.failed or rims_grad._COMPILED_STEP_BACKWARD.failed)
