"""Data-parallel training: two CPU processes under torchrun with gloo."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agents.checkpoint import load_checkpoint
from tests.test_cli import ROOT, TINY, scalars
from tests.test_robustness import wait_for_checkpoint
from train import main

_BESIDE_PYTHON = os.path.join(os.path.dirname(sys.executable), "torchrun")
TORCHRUN = _BESIDE_PYTHON if os.path.exists(_BESIDE_PYTHON) else shutil.which("torchrun")
requires_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")


def torchrun_two_processes(script: Path, scratch: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``script ARGS`` in two CPU processes under torchrun (gloo), one torch thread each;
    torchrun's own temporary folders go under ``scratch`` (it leaves them behind in /tmp)."""
    assert TORCHRUN is not None
    scratch.mkdir(exist_ok=True)
    return subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)},
    )  # fmt: skip


@requires_torchrun
def test_two_processes_keep_identical_parameters_and_count_all_steps(tmp_path):
    run = tmp_path / "run"
    result = torchrun_two_processes(
        ROOT / "train.py", tmp_path / "tmp", "--env", "rims/CueMemory-v0", "--run-dir", str(run),
        "--total-steps", "128", *TINY, "--torch-threads", "1", "--centre-features",
        "--centre-keep-size",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    # Buffers too: each rank's features' moments are averaged over the ranks, so all hold one.
    assert "data-parallel over 2 processes; parameters identical on all: yes" in result.stdout
    assert result.stdout.count("trained to step 128") == 1  # only rank 0 reports
    # 2 ranks x 2 envs x 16 steps = 64 steps per update: 128 steps are 2 updates.
    latest = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert latest["global_step"] == 128 and latest["update"] == 2
    assert [e.step for e in scalars(run)["charts/SPS"]] == [64, 128]


@requires_torchrun
def test_every_rank_stops_its_epochs_where_the_mean_kl_says(tmp_path):
    """--target-kl stops an update's epochs early. Rank 1's KL (1.0) alone is past the target,
    rank 0's is not: each deciding alone, rank 0 went on to another epoch and its gradient
    all-reduce met rank 1's next collective (gloo: "Received data size doesn't match expected
    size"). The KL averaged over ranks stops both."""
    run = tmp_path / "run"
    result = run_faulty(tmp_path, "kl", run, "--update-epochs", "3", "--target-kl", "0.3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data-parallel over 2 processes; parameters identical on all: yes" in result.stdout
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"] == 256


@requires_torchrun
def test_two_processes_share_each_evaluation_during_training(tmp_path):
    run = tmp_path / "run"
    result = torchrun_two_processes(
        ROOT / "train.py", tmp_path / "tmp", "--env", "rims/CueMemory-v0", "--run-dir", str(run),
        "--total-steps", "128", *TINY, "--torch-threads", "1", "--eval-every", "1",
        "--eval-episodes", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parameters identical on all: yes" in result.stdout
    # Rank 0 reports each evaluation once, with the episodes of both ranks (3 + 2).
    lines = [line for line in result.stdout.splitlines() if line.startswith("eval at step")]
    assert [line.split(",")[0] for line in lines] == [
        "eval at step 64 (5 episodes a row",
        "eval at step 128 (5 episodes a row",
    ]
    assert [e.step for e in scalars(run)["eval/return"]] == [64, 128]


PROBE = """
import os, sys
import torch
sys.path.insert(0, {root!r})
from agents.distributed import average_gradients, init_distributed, shutdown

world = init_distributed(torch.device("cpu"))
model = torch.nn.Linear(3, 2)
torch.optim.Adam(model.parameters())  # the first optimizer imports torch._dynamo
model(torch.ones(4, 3)).sum().backward()
average_gradients(model, world)
shutdown(world)
names = [open(f"/proc/self/task/{{t}}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join({out!r}, f"rank{{world.rank}}.txt"), "w") as f:
    f.write(str(sum("gloo" in n for n in names)))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@requires_torchrun
def test_shutdown_leaves_no_gloo_threads_to_run_during_interpreter_exit(tmp_path):
    # Left running, a gloo worker frees the last all-reduce's tensors while Python finalizes
    # and the rank aborts (SIGABRT) after a successful run: an intermittent failure.
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(root=str(ROOT), out=str(tmp_path)))
    result = torchrun_two_processes(probe, tmp_path / "tmp")
    assert result.returncode == 0, result.stderr[-2000:]
    gloo_threads_left = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert gloo_threads_left == ["0", "0"]


FAULTY = """
import os, sys
sys.path.insert(0, {root!r})
import pytest
import tests.faulty_envs  # registers rims-test/...
from tests.test_robustness import event_records_fail_after, full_disk_after
from train import main

fault, argv = sys.argv[1], sys.argv[2:]  # the faults made here; others ("taken") need none
if os.environ["RANK"] == "0" and fault == "checkpoint":
    full_disk_after(pytest.MonkeyPatch(), 3)  # the first update's latest, step and best files
if os.environ["RANK"] == "0" and fault == "events":
    event_records_fail_after(pytest.MonkeyPatch(), 12)
if os.environ["RANK"] == "1" and fault == "kl":  # rank 1's policy seems to move far
    import torch, agents.ppo
    loss = agents.ppo.minibatch_loss
    def high_kl(*args):
        parts = loss(*args)
        parts.approx_kl = torch.tensor(1.0)
        return parts
    agents.ppo.minibatch_loss = high_kl
if os.environ["RANK"] == "1" and fault == "oom":  # rank 1 alone runs out of memory, in update 2
    import agents.ppo
    loss, calls = agents.ppo.minibatch_loss, []
    def out_of_memory(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: "
                               "can't allocate memory: you tried to allocate 123456789 bytes.")
        return loss(*args)
    agents.ppo.minibatch_loss = out_of_memory
sys.exit(main(argv))
"""


def run_faulty(tmp_path: Path, fault: str, run: Path, *flags: str) -> subprocess.CompletedProcess:
    """``rims train`` on the cue task under torchrun (two ranks), with ``fault`` made by
    ``FAULTY`` ("none": no fault of its own)."""
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY.format(root=str(ROOT)))
    return torchrun_two_processes(
        script, tmp_path / "tmp", fault, "train", "--env", "rims/CueMemory-v0",
        "--run-dir", str(run), "--total-steps", "256", *TINY, "--torch-threads", "1", *flags,
    )  # fmt: skip


def root_cause_rank(stderr: str) -> int | None:
    """The rank torchrun names as the job's root cause (None where it names none)."""
    cause = re.search(r"Root Cause \(first observed failure\):\n\[\d\]:\n.*\n.*\n +rank +: (\d)",
                      stderr)  # fmt: skip
    return None if cause is None else int(cause[1])


@requires_torchrun
@pytest.mark.parametrize(
    ("fault", "flags", "stop", "kept"),
    [
        ("taken", [], r"error: RUN already holds a run; pass --resume .*", None),
        (
            "checkpoint",
            [],
            r"cannot write LATEST: No space left on device; the run stopped at step 128 and "
            r"LATEST holds step 64",
            64,
        ),
        (
            "events",
            [],
            r"cannot write the TensorBoard events in RUN: No space left on device; "
            r"the run stopped at step (\d+) and LATEST holds step \1",
            "stopped",
        ),
        (
            "crash",
            ["--env", "rims-test/RankOneCrash-v0", "--checkpoint-every", "10"],
            r"an environment failed during update 3 \(.*boom: the simulator crashed.*\); "
            r"checkpoint LATEST",
            128,
        ),
        ("oom", [], r"out of memory: 123,456,789 bytes could not be allocated; a smaller .*", 64),
    ],
    ids=[
        "run-dir-taken",
        "checkpoint-disk-full",
        "events-disk-full",
        "env-crash-on-rank-1",
        "out-of-memory-on-rank-1",
    ],
)
def test_a_stop_on_one_rank_stops_every_rank_with_one_line(tmp_path, fault, flags, stop, kept):
    """Rank 0 alone writes, and one rank's envs or memory may fail alone: the other ranks must
    leave at the same point, quietly, not fail at their next collective with a traceback of
    their own (or, under NCCL, wait in it for 10 minutes)."""
    run = tmp_path / "run"
    if fault == "taken":  # the run directory already holds a run
        assert main(["train", "--env", "rims/CueMemory-v0", "--run-dir", str(run),
                     "--total-steps", "32", *TINY]) == 0  # fmt: skip
    result = run_faulty(tmp_path, fault, run, *flags)
    assert result.returncode != 0
    latest = run / "checkpoints" / "latest.pt"
    expected = stop.replace("RUN", re.escape(str(run))).replace("LATEST", re.escape(str(latest)))
    ours = [line for line in result.stderr.splitlines() if line.startswith("rims:")]
    assert len(ours) == 1 and re.fullmatch(f"rims: {expected}", ours[0]), result.stderr[-3000:]
    # One rank failed, and torchrun names it; the other left with it (exit 0, or torchrun's
    # SIGTERM where it was not gone yet), without a traceback of its own.
    assert root_cause_rank(result.stderr) == (1 if fault in ("crash", "oom") else 0)
    assert "Connection" not in result.stderr and "[rank" not in result.stderr
    assert re.findall(r"exitcode +: (-?\d+)", result.stderr) in (["1"], ["2"], ["-15", "1"],
                                                                ["-15", "2"])  # fmt: skip
    if kept == "stopped":
        kept = int(re.search(r"stopped at step (\d+)", ours[0])[1])
    if kept is not None:
        assert load_checkpoint(latest)["global_step"] == kept


@requires_torchrun
@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--k", "9"], "rims: error: --k must be in 1..num_units=3, got 9"),
        (["--no-such-flag"], "rims: error: unrecognized arguments: --no-such-flag"),
        (["--resume"], r"rims: error: .*latest\.pt.*"),
        (["--env", "rims-test/NaNReward-v0"], "rims: the loss or the parameters became NaN.*"),
    ],
    ids=["bad-value", "unknown-flag", "corrupt-checkpoint", "diverged-loss"],
)
def test_an_error_every_rank_meets_is_said_once(tmp_path, flags, said):
    """Before the process group exists (the command line), and after it (a checkpoint every
    rank reads, a loss that diverges on every rank): rank 0 says it, the other leaves quietly."""
    run = tmp_path / "run"
    if "--resume" in flags:
        assert main(["train", "--env", "rims/CueMemory-v0", "--run-dir", str(run),
                     "--total-steps", "32", *TINY]) == 0  # fmt: skip
        latest = run / "checkpoints" / "latest.pt"
        latest.write_bytes(latest.read_bytes()[:100])  # cut short
    result = run_faulty(tmp_path, "none", run, *flags)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("rims")]
    assert len(ours) == 1 and re.match(said, ours[0]), result.stderr[-3000:]
    assert "[rank" not in result.stderr and "Connection" not in result.stderr
    # Rank 0's code, and torchrun's SIGTERM of the other where it was still leaving.
    codes = sorted(re.findall(r"exitcode +: (-?\d+)", result.stderr))
    assert codes in (["1"], ["2"], ["-15", "1"], ["-15", "2"])
    assert root_cause_rank(result.stderr) == 0


@requires_torchrun
def test_a_run_resumes_only_with_as_many_processes_as_trained_it(tmp_path, capsys):
    """Each process's envs make part of every update: another count would change the batch and
    run past --total-steps (a 2-process run resumed by one process ran 320 of 256 steps)."""
    two, one = tmp_path / "two", tmp_path / "one"
    flags = ["--env", "rims/CueMemory-v0", "--total-steps", "128", *TINY, "--torch-threads", "1"]
    scratch = tmp_path / "tmp"
    assert (
        torchrun_two_processes(ROOT / "train.py", scratch, "--run-dir", str(two), *flags).returncode
        == 0
    )
    resume = ["--resume", "--total-steps", "256", "--torch-threads", "1"]
    assert main(["train", "--run-dir", str(two), *resume]) == 2
    assert capsys.readouterr().err.strip() == (
        f"rims: error: {two} was trained by 2 data-parallel processes and this run has one "
        f"process; resume it with as many: torchrun --nproc_per_node 2 train.py --run-dir {two} "
        "--resume (2 processes in all, on one machine or several)"
    )
    assert load_checkpoint(two / "checkpoints" / "latest.pt")["global_step"] == 128
    # The other way round, rank 0 says it once.
    assert main(["train", "--run-dir", str(one), *flags]) == 0
    result = torchrun_two_processes(ROOT / "train.py", scratch, "--run-dir", str(one), *resume)
    assert result.returncode != 0 and "[rank" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("rims:")] == [
        f"rims: error: {one} was trained by one process and this run has 2 data-parallel "
        f"processes; resume it with as many: rims train --run-dir {one} --resume"
    ]
    # With as many processes, each resumes to the steps asked.
    assert (
        torchrun_two_processes(
            ROOT / "train.py", scratch, "--run-dir", str(two), *resume
        ).returncode
        == 0
    )
    assert main(["train", "--run-dir", str(one), *resume]) == 0
    for run in (one, two):
        assert load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"] == 256


@requires_torchrun
def test_ctrl_c_stops_every_rank_and_rank_0_alone_says_so(tmp_path):
    run, scratch = tmp_path / "run", tmp_path / "tmp"
    scratch.mkdir()
    assert TORCHRUN is not None
    proc = subprocess.Popen(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", str(ROOT / "train.py"),
         "--env", "rims/CueMemory-v0", "--run-dir", str(run), "--total-steps", "10000000",
         *TINY, "--torch-threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)},
    )  # fmt: skip
    wait_for_checkpoint(run, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches torchrun and both ranks
    _, err = proc.communicate(timeout=120)
    ours = [line for line in err.splitlines() if line.startswith("rims:")]
    step = load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"]
    assert ours == [
        "rims: SIGINT received; stopping after this step (press Ctrl-C again to exit at once)",
        f"rims: stopped by SIGINT at step {step:,}; checkpoint {run}/checkpoints/latest.pt; "
        f"continue with: torchrun --nproc_per_node 2 train.py --run-dir {run} --resume (2 "
        "processes in all, on one machine or several)",
    ], err[-3000:]
    assert "[rank" not in err
