"""Data-parallel training: two CPU processes under torchrun with gloo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from agents.checkpoint import load_checkpoint
from tests.test_cli import ROOT, TINY, scalars


@pytest.mark.skipif(
    shutil.which("torchrun") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun not installed",
)
def test_two_processes_keep_identical_parameters_and_count_all_steps(tmp_path):
    run = tmp_path / "run"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run(
        [torchrun if os.path.exists(torchrun) else "torchrun", "--standalone",
         "--nproc_per_node", "2", str(ROOT / "train.py"), "--env", "rims/CueMemory-v0",
         "--run-dir", str(run), "--total-steps", "128", *TINY, "--torch-threads", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data-parallel over 2 processes; parameters identical on all: yes" in result.stdout
    assert result.stdout.count("trained to step 128") == 1  # only rank 0 reports
    # 2 ranks x 2 envs x 16 steps = 64 steps per update: 128 steps are 2 updates.
    latest = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert latest["global_step"] == 128 and latest["update"] == 2
    assert [e.step for e in scalars(run)["charts/SPS"]] == [64, 128]
