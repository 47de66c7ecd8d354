"""Nothing lost, nothing executed: signals, resume, bad checkpoints, NaNs, crashed envs, seeds."""

from __future__ import annotations

import errno
import os
import pickle
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
from tensorboard.summary.writer.record_writer import RecordWriter

import tests.faulty_envs  # noqa: F401  (registers rims-test/* envs)
from agents.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from agents.config import resolve_config
from agents.logger import quiet_event_writer_threads
from agents.trainer import TrainingStopped, out_of_memory, train
from tests.test_cli import ROOT, TINY, exit_code, scalars
from train import main


def start_training(run: Path, *extra: str) -> subprocess.Popen:
    """A training process in its own process group (so a test can Ctrl-C the whole group)."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "--run-dir", str(run), "--total-steps",
         "10000000", *TINY, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, deadline_s: float = 120.0) -> None:
    latest = run / "checkpoints" / "latest.pt"
    end = time.monotonic() + deadline_s
    while not latest.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "sig, code, extra",
    [
        (signal.SIGINT, 130, ["--async-envs"]),  # Ctrl-C: the whole group, env workers too
        (signal.SIGTERM, 143, []),  # a scheduler's kill: the main process only
    ],
)
def test_signal_checkpoints_and_resume_continues(tmp_path, sig, code, extra):
    run = tmp_path / "run"
    proc = start_training(run, *extra)
    wait_for_checkpoint(run, proc)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    name = signal.Signals(sig).name
    assert f"stopped by {name} at step" in err and "--resume" in err
    assert "Traceback" not in err
    step = load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"]
    assert step > 0 and step % 32 == 0
    assert main(["train", "--resume", "--run-dir", str(run), "--total-steps", str(step + 64)]) == 0
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"] == step + 64
    steps = [e.step for e in scalars(run)["charts/SPS"]]
    assert steps == list(range(32, step + 65, 32))  # one curve, no gap, no overlap


def test_second_sigint_exits_at_once(tmp_path):
    run = tmp_path / "run"
    proc = start_training(run, "--async-envs")
    wait_for_checkpoint(run, proc)
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err


def test_resuming_a_finished_run_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--eval-every", "1", "--eval-episodes", "1"]
    assert main(["train", "--total-steps", "32", "--run-dir", str(run), *flags, *TINY]) == 0
    finished = capsys.readouterr().out.strip().splitlines()[-1]
    assert finished.startswith("best eval/return ") and " at step 32: " in finished
    assert main(["train", "--resume", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "already finished its 32 steps" in out
    assert out.strip().splitlines()[-1] == finished  # still names what best.pt holds


def test_checkpoint_crafted_to_run_code_is_refused_and_does_not_run(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": 1, "model": Evil()}, path)
    # The message names what it would have called, not torch's advice to load it unsafely.
    refused = r"not a readable rims-rl checkpoint \(it holds a Python object, \w+\.system,"
    with pytest.raises(CheckpointError, match=refused) as refusal:
        load_checkpoint(path)
    assert "weights_only" not in str(refusal.value)
    assert exit_code(["eval", str(path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not marker.exists()


def test_a_config_json_that_is_not_text_is_one_line_or_a_group_of_its_own(tmp_path, capsys):
    """A run's config.json overwritten with bytes that are not UTF-8 (a PNG saved over it): a
    resume says so in one line, and ``rims plot`` groups the run by its folder's name, as it
    does a config that does not parse."""
    from agents.curves import group_label

    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--total-steps", "32", *TINY]) == 0
    capsys.readouterr()
    (run / "config.json").write_bytes(b"\x89PNG\r\n")
    assert exit_code(["train", "--run-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json is not valid JSON" in err and len(err.splitlines()) == 1
    assert group_label(run) == "run"


def test_truncated_wrong_version_and_foreign_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(1000)}})
    assert load_checkpoint(good)["model"]["w"].sum() == 1000
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"not a readable .* \(the file ends early"):
        load_checkpoint(truncated)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"not a readable .* \(the file ends early"):
        load_checkpoint(empty)
    for name, junk in (("junk.pt", b"not a checkpoint"), ("zip.pt", b"PK\x03\x04junk")):
        (tmp_path / name).write_bytes(junk)
        with pytest.raises(CheckpointError, match=r"not a readable .* \(not a torch checkpoint"):
            load_checkpoint(tmp_path / name)
    old = tmp_path / "old.pt"
    torch.save({"format": FORMAT, "version": 99}, old)
    with pytest.raises(CheckpointError, match="version 99; this rims-rl reads version 1"):
        load_checkpoint(old)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(CheckpointError, match="is not a rims-rl checkpoint"):
        load_checkpoint(foreign)
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "empty.pt",
        "foreign.pt",
        "good.pt",
        "junk.pt",
        "old.pt",
        "truncated.pt",
        "zip.pt",
    ]


def small_config(run: Path, **over):
    base = dict(
        env="rims/CueMemory-v0", core="rims", total_steps=96, run_dir=str(run), num_envs=2,
        num_steps=16, num_minibatches=1, update_epochs=2, hidden_size=4, num_units=3, k=2,
        feature_size=8, progress=False, checkpoint_every=1,
    )  # fmt: skip
    return resolve_config({**base, **over})


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    # Each of the 2 envs steps 16 times per update; rewards turn NaN at its 41st step.
    with pytest.raises(TrainingStopped, match="NaN/inf in update 3") as stop:
        train(small_config(run, env="rims-test/NaNReward-v0"))
    assert stop.value.exit_code == 1
    assert f"; {run / 'checkpoints' / 'latest.pt'} holds step 64; " in str(stop.value)
    # The stop crosses process boundaries intact (a benchmark's process pool unpickles it).
    copied = pickle.loads(pickle.dumps(stop.value))
    assert (str(copied), copied.exit_code) == (str(stop.value), 1)
    latest = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert latest["update"] == 2
    assert all(v.isfinite().all() for v in latest["model"].values())


def full_disk_after(monkeypatch, writes: int) -> None:
    """Let ``writes`` more files be written, then fail every write as a full disk does."""
    left = [writes]
    real = Path.write_bytes

    def write_bytes(path: Path, data) -> int:
        if left[0] <= 0:
            real(path, bytes(data)[:10])  # part of it, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        left[0] -= 1
        return real(path, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_the_file_as_it_was(
    tmp_path, monkeypatch
):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"global_step": 1})
    full_disk_after(monkeypatch, 0)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(path, {"global_step": 2})
    assert str(err.value) == f"cannot write {path}: No space left on device"
    monkeypatch.undo()
    assert load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temporary file left


@pytest.mark.parametrize(("writes", "kept"), [(0, None), (2, 32)])
def test_a_full_disk_stops_the_run_with_a_line_naming_the_last_checkpoint(
    tmp_path, monkeypatch, capsys, writes, kept
):
    """Each update writes latest.pt, then a numbered checkpoint: two writes an update."""
    run = tmp_path / "run"
    full_disk_after(monkeypatch, writes)
    assert main(["train", "--run-dir", str(run), "--total-steps", "96", *TINY]) == 1
    err = capsys.readouterr().err.strip()
    latest = run / "checkpoints" / "latest.pt"
    assert err.startswith(f"rims: cannot write {latest}: No space left on device; ")
    assert len(err.splitlines()) == 1
    monkeypatch.undo()
    if kept is None:
        assert err.endswith("the run stopped at step 32 and no checkpoint was written")
        assert not latest.exists()
    else:
        assert err.endswith(f"the run stopped at step 64 and {latest} holds step 32")
        assert load_checkpoint(latest)["global_step"] == kept
        # The run goes on from there once there is room.
        assert main(["train", "--resume", "--run-dir", str(run)]) == 0
        assert load_checkpoint(latest)["global_step"] == 96


def event_records_fail_after(monkeypatch, records: int) -> None:
    """Let TensorBoard write ``records`` more records, then fail each as a full disk does."""
    left = [records]
    real = RecordWriter.write

    def write(writer: RecordWriter, data: bytes) -> None:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        left[0] -= 1
        real(writer, data)

    monkeypatch.setattr(RecordWriter, "write", write)


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_event_writes_that_fail_stop_the_run_keeping_its_progress(tmp_path, monkeypatch, capsys):
    """TensorBoard writes from its own thread; its full disk surfaces at the next write."""
    event_records_fail_after(monkeypatch, 6)
    run = tmp_path / "run"
    argv = ["train", "--run-dir", str(run), "--total-steps", "96", *TINY]
    assert main([*argv, "--checkpoint-every", "10"]) == 1
    err = capsys.readouterr().err.strip()
    latest = run / "checkpoints" / "latest.pt"
    stopped = re.fullmatch(
        f"rims: cannot write the TensorBoard events in {re.escape(str(run))}: No space left on "
        f"device; the run stopped at step (\\d+) and {re.escape(str(latest))} holds step (\\d+)",
        err,
    )  # one line, no thread's traceback: the checkpoint holds the step it stopped at
    assert stopped and stopped[1] == stopped[2], err
    assert load_checkpoint(latest)["global_step"] == int(stopped[1])
    monkeypatch.undo()
    assert main(["train", "--resume", "--run-dir", str(run)]) == 0
    assert load_checkpoint(latest)["global_step"] == 96


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_event_file_that_cannot_be_started_is_one_line(tmp_path, monkeypatch, capsys):
    """The writer writes its file's first record as it is made: before any training."""
    run = tmp_path / "run"
    latest = run / "checkpoints" / "latest.pt"
    event_records_fail_after(monkeypatch, 0)
    assert main(["train", "--run-dir", str(run), "--total-steps", "32", *TINY]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"rims: cannot write the TensorBoard events in {run}: No space left on device; nothing "
        "was trained and no checkpoint was written"
    )
    monkeypatch.undo()
    assert main(["train", "--run-dir", str(run), "--total-steps", "32", *TINY, "--overwrite"]) == 0
    event_records_fail_after(monkeypatch, 0)
    resume = ["train", "--resume", "--run-dir", str(run), "--total-steps", "64"]
    assert main(resume) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"nothing was trained and {latest} still holds step 32")
    assert len(err.splitlines()) == 1 and load_checkpoint(latest)["global_step"] == 32


def test_only_tensorboards_writer_threads_are_kept_from_printing_a_traceback(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.thread.name))
    quiet_event_writer_threads()
    hook = threading.excepthook
    quiet_event_writer_threads()  # once is enough: the hook is not wrapped twice
    assert threading.excepthook is hook

    class Failing:
        def write(self, data: bytes) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    records: queue.Queue = queue.Queue()
    records.put(b"an event")
    writer = _AsyncWriterThread(records, Failing(), flush_secs=120)
    writer.start()
    writer.join()
    assert isinstance(writer.exception, OSError)  # kept, for the writer to raise again
    other = threading.Thread(target=lambda: 1 / 0, name="other")
    other.start()
    other.join()
    assert seen == ["other"]


@pytest.mark.parametrize(
    ("command", "flag", "name"),
    [
        ("eval", "--json", "rows.json"),
        ("eval", "--csv", "rows.csv"),
        ("eval", "--plot", "rows.png"),
        ("mechanisms", "--json", "units.json"),
        ("plot", "--out", "curve.png"),
    ],
)
def test_an_output_that_cannot_be_written_is_one_line_and_leaves_the_old_file(
    tmp_path, monkeypatch, capsys, command, flag, name
):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--total-steps", "32", *TINY]) == 0
    out = tmp_path / name
    out.write_text("an earlier output")
    real_text, real_open = Path.write_text, Path.open

    def full_disk(path: Path) -> None:  # part of the output, then the disk is full
        with real_open(path, "w") as f:
            f.write("par")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write_text(path: Path, *args, **kwargs):
        return full_disk(path) if path.parent == tmp_path else real_text(path, *args, **kwargs)

    def open_(path: Path, mode: str = "r", *args, **kwargs):  # the CSV is written through open
        if path.parent == tmp_path and "w" in mode:
            full_disk(path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(Path, "open", open_)
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", lambda fig, path, **k: full_disk(path))
    extra = {"eval": ["--episodes", "1"], "mechanisms": ["--episodes", "1"],
             "plot": ["--tag", "losses/entropy"]}[command]  # fmt: skip
    capsys.readouterr()
    assert main([command, str(run), *extra, flag, str(out)]) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert err == f"rims: error: {out}: No space left on device"
    assert out.read_text() == "an earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "run"])  # no temp file


CPU_ALLOCATOR = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 96000768000000 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.mark.parametrize(
    ("error", "why"),
    [
        (RuntimeError(CPU_ALLOCATOR), "96,000,768,000,000 bytes could not be allocated"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; ...)"),
         "20.00 GiB could not be allocated"),
        (MemoryError(), "an allocation failed"),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),  # not memory
    ],
)  # fmt: skip
def test_out_of_memory_tells_a_failed_allocation_from_other_errors(error, why):
    assert out_of_memory(error) == why


def test_a_policy_too_large_for_memory_is_one_line(tmp_path, monkeypatch, capsys):
    def too_large(*args, **kwargs):
        raise RuntimeError(CPU_ALLOCATOR)

    monkeypatch.setattr("agents.trainer.build_policy", too_large)
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--total-steps", "32", *TINY]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rims: out of memory: 96,000,768,000,000 bytes could not be allocated; ")
    assert len(err.splitlines()) == 1
    assert not run.exists()  # found before anything was written


@pytest.mark.filterwarnings("ignore:.*(Worker|Traceback|Raising the last):UserWarning")
@pytest.mark.parametrize(
    "env, message",
    [
        ("rims-test/Crash-v0", "RuntimeError: boom: the simulator crashed"),  # step raises
        ("rims-test/Die-v0", "env worker process died without a word"),  # SIGKILLed mid-step
        ("rims-test/Hang-v0", "EnvTimeout: an env worker did not answer a step within 5 s"),
    ],
)
def test_crashed_env_worker_is_reported_and_checkpointed(tmp_path, env, message):
    run = tmp_path / "run"
    started = time.monotonic()
    with pytest.raises(TrainingStopped, match=message) as stop:
        # Healthy steps take milliseconds; 5 s leaves room on a loaded machine.
        train(small_config(run, env=env, async_envs=True, env_timeout=5.0))
    assert stop.value.exit_code == 1 and "an environment failed during update 3" in str(stop.value)
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["update"] == 2
    # The hung worker was terminated, not waited for (it sleeps for an hour).
    assert time.monotonic() - started < 120


def test_an_inline_env_that_never_returns_stops_training_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    started = time.monotonic()
    # Its first episodes run; the first autoreset (no seed) loops forever in the env's code.
    with pytest.raises(TrainingStopped, match="TimeLimitReached: still running after 1 s") as stop:
        train(small_config(run, env="rims-test/LateEndlessReset-v0", env_timeout=1.0))
    message = str(stop.value)
    assert "an environment failed during update 1" in message and stop.value.exit_code == 1
    assert re.search(r"\(faulty_envs.py:9[56]\)", message)  # the env's own loop (either line)
    assert "--env-timeout sets the limit" in message
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["update"] == 0
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("compiled", [False, True])  # --rims-compile: compiled kernels too
def test_same_seed_same_first_updates_bit_for_bit(tmp_path, compiled):
    a = train(small_config(tmp_path / "a", env="MiniGrid-DoorKey-5x5-v0", rims_compile=compiled))
    b = train(small_config(tmp_path / "b", env="MiniGrid-DoorKey-5x5-v0", rims_compile=compiled))
    assert a.global_step == b.global_step == 96
    ma = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")["model"]
    mb = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["model"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    la = [e.value for e in scalars(tmp_path / "a")["losses/value_loss"]]
    lb = [e.value for e in scalars(tmp_path / "b")["losses/value_loss"]]
    assert la == lb and len(la) == 3
    c = train(small_config(tmp_path / "c", env="MiniGrid-DoorKey-5x5-v0", seed=2,
                           rims_compile=compiled))  # fmt: skip
    mc = load_checkpoint(tmp_path / "c" / "checkpoints" / "latest.pt")["model"]
    assert c.global_step == 96 and not all(torch.equal(ma[k], mc[k]) for k in ma)


def test_rng_states_survive_a_checkpoint(tmp_path):
    """Python, NumPy and torch draws after a restore repeat the draws after the capture."""
    import random

    import numpy as np

    from agents.rng import capture_rng_states, restore_rng_states, seed_everything

    seed_everything(3)
    random.random(), np.random.normal(), torch.randn(1)  # move every stream (numpy: cached gauss)
    path = tmp_path / "rng.pt"
    save_checkpoint(path, capture_rng_states())

    def draws():
        return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3)

    first = draws()
    seed_everything(99)  # something else moves the generators in between
    restore_rng_states(load_checkpoint(path))  # weights_only=True
    second = draws()
    assert first[:3] == second[:3] and torch.equal(first[3], second[3])
