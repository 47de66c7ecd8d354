"""Envs that cannot make a level: one line and exit code 2, not a traceback or a hang.

Minigrid draws each level at reset, so a shift its generator cannot honour (an even size for
the Memory envs, no objects for Fetch, one object for PutNear) fails or loops only there.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

import tests.faulty_envs  # noqa: F401  (registers rims-test/* envs)
from agents.trainer import TrainingStopped, train
from envs.factory import EnvError, probe_resets
from envs.memory import ENV_ID
from envs.probe import TimeLimitReached, failure_summary, time_limit
from tests.test_cli import TINY, exit_code
from tests.test_robustness import small_config

MEMORY = "MiniGrid-MemoryS7-v0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs: one on DoorKey (Minigrid's view and actions), one on the cue task."""
    root = tmp_path_factory.mktemp("probe_runs")
    made = {}
    for name, env in (("minigrid", "MiniGrid-DoorKey-5x5-v0"), ("cue", ENV_ID)):
        run = root / name
        argv = ["train", "--env", env, "--total-steps", "32", "--run-dir", str(run), *TINY]
        assert exit_code(argv) == 0
        made[name] = run
    return made


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("rims: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_size_the_memory_generator_refuses_is_one_line(runs, capsys):
    # MemoryEnv asserts an odd height when it draws the level; size=9 is fine.
    argv = ["eval", str(runs["minigrid"]), "--env", MEMORY, "--episodes", "2"]
    assert exit_code([*argv, "--shift", "size=8"]) == 2
    line = one_error_line(capsys)
    assert f"{MEMORY} with size=8 failed at a reset" in line
    assert "minigrid/envs/memory.py" in line and "assert height % 2 == 1" in line
    assert exit_code([*argv, "--shift", "size=9"]) == 0


def test_a_suite_row_that_cannot_reset_stops_eval_before_any_row_runs(runs, tmp_path, capsys):
    rows = [{"env": "MiniGrid-DoorKey-5x5-v0"}, {"env": MEMORY, "shifts": ["size=12"]}]
    (tmp_path / "suite.json").write_text(json.dumps({"mixed": {"rows": rows}}))
    argv = ["eval", str(runs["minigrid"]), "--suite", str(tmp_path / "suite.json")]
    assert exit_code([*argv, "--episodes", "2"]) == 2
    out = capsys.readouterr()
    assert "size=12 failed at a reset" in out.err
    assert "minigrid | MiniGrid-DoorKey-5x5-v0" not in out.out  # nor was the first row


def test_fetch_without_objects_names_the_line_in_its_generator(runs, capsys):
    argv = ["eval", str(runs["minigrid"]), "--env", "MiniGrid-Fetch-5x5-N2-v0", "--episodes", "2"]
    assert exit_code([*argv, "--shift", "distractors=0"]) == 2
    line = one_error_line(capsys)
    assert "ValueError: high <= 0" in line and "minigrid/envs/fetch.py:" in line


def test_record_and_train_refuse_an_env_that_cannot_reset(runs, tmp_path, capsys):
    out = tmp_path / "x.gif"
    argv = ["record", str(runs["minigrid"]), "--env", MEMORY, "--shift", "size=10"]
    assert exit_code([*argv, "--out", str(out)]) == 2
    assert "size=10 failed at a reset" in one_error_line(capsys)
    assert not out.exists()
    run = tmp_path / "run"
    train = ["train", "--env", "rims-test/NoLevel-v0", "--run-dir", str(run), *TINY]
    assert exit_code(train) == 2
    line = one_error_line(capsys)
    assert "rims-test/NoLevel-v0 failed at a reset with seed 0: AssertionError" in line
    assert "assert self.delay < 0" in line
    assert not run.exists()  # refused before anything was written


def test_a_reset_that_never_ends_is_stopped_in_time():
    started = time.monotonic()
    with pytest.raises(EnvError, match="did not finish a reset within 0.3 s"):
        probe_resets("rims-test/EndlessReset-v0", seconds=0.3)
    assert time.monotonic() - started < 5


def test_time_limit_puts_back_an_outer_timer():
    # pytest-timeout arms SIGALRM the same way; the probe must not disarm it.
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        with pytest.raises(TimeLimitReached):
            with time_limit(0.05):
                while True:
                    pass
        with time_limit(5.0):
            pass
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 20.0 < left <= 30.0
        assert signal.getsignal(signal.SIGALRM) is not None and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def endless_loop_under(seconds: float) -> str:
    """Run an endless Python loop under ``time_limit``; what stopped it."""
    try:
        with time_limit(seconds):
            while True:
                pass
    except TimeLimitReached as err:
        return str(err)


def run_in_thread(fn, *args):
    """``fn(*args)`` on another thread; its result (the test fails if it does not end)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)), daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the limit did not stop the block"
    return result[0]


def test_time_limit_stops_a_loop_off_the_main_thread():
    # SIGALRM reaches only the main thread; a watcher thread raises in the block's thread.
    assert run_in_thread(endless_loop_under, 0.05) == "still running after 0.05 s"


@pytest.mark.timeout(30)  # a limit that fails would loop for ever on this thread
def test_time_limit_without_interval_timers_uses_the_watcher(monkeypatch):
    # Windows has no setitimer: the main thread is watched by a thread too.
    monkeypatch.setattr("envs.probe._alarm_available", lambda: False)
    previous = signal.getsignal(signal.SIGALRM)
    assert endless_loop_under(0.05) == "still running after 0.05 s"
    assert signal.getsignal(signal.SIGALRM) is previous  # no alarm was armed


def test_a_block_that_ends_in_time_leaves_no_exception_behind():
    def in_time_then_busy() -> str:
        with time_limit(0.05):
            pass  # ends long before the limit
        deadline = time.monotonic() + 0.2  # then runs Python code past the limit
        while time.monotonic() < deadline:
            pass
        return "ran on"

    assert run_in_thread(in_time_then_busy) == "ran on"


def test_a_level_that_fails_mid_evaluation_is_one_line(runs, capsys):
    # Each env's first level (reset with a seed) is made; the next one (an autoreset) is not.
    argv = ["eval", str(runs["cue"]), "--env", "rims-test/LateNoLevel-v0", "--episodes", "4"]
    assert exit_code(argv) == 2
    line = one_error_line(capsys)
    assert "rims-test/LateNoLevel-v0 failed during evaluation: ValueError: low >= high" in line
    assert "faulty_envs.py:" in line


def test_a_level_that_never_comes_mid_evaluation_is_stopped(runs, capsys, monkeypatch):
    # Each env's first level is made; the next one (an autoreset) is searched for forever.
    monkeypatch.setattr("agents.evaluate.CALL_SECONDS", 0.5)
    started = time.monotonic()
    argv = ["eval", str(runs["cue"]), "--env", "rims-test/LateEndlessReset-v0", "--episodes", "4"]
    assert exit_code(argv) == 2
    assert time.monotonic() - started < 30
    line = one_error_line(capsys)
    assert "rims-test/LateEndlessReset-v0 did not answer within 0.5 s during evaluation" in line


def test_a_step_that_raises_while_recording_is_one_line(runs, tmp_path, capsys):
    # CrashEnv raises from its 41st step, in the 11th episode of the cue task (4 steps each).
    out = tmp_path / "x.gif"
    argv = ["record", str(runs["cue"]), "--env", "rims-test/Crash-v0", "--episodes", "12"]
    assert exit_code([*argv, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "rims-test/Crash-v0 failed during recording: RuntimeError: boom" in line
    assert not out.exists()


def test_failure_summary_prefers_the_env_module_and_shows_a_bare_assert():
    def generator():  # a bare assert (pytest's rewriting would give this module's a message)
        raise AssertionError

    try:
        generator()
    except AssertionError as err:
        text = failure_summary(err)
    assert text.startswith("AssertionError (test_env_probe.py:")
    assert text.endswith(": raise AssertionError)")
    try:
        int("x")
    except ValueError as err:
        text = failure_summary(err, module=__name__)
    assert text.startswith("ValueError: invalid literal") and "test_env_probe.py:" in text


def test_a_constructor_that_refuses_its_settings_is_one_error():
    with pytest.raises(EnvError, match=r"failed when built: ValueError: delay must be >= 0"):
        probe_resets(ENV_ID, env_kwargs={"delay": -1})


def test_an_in_process_env_that_raises_in_training_names_its_line(tmp_path):
    # Two envs of CrashEnv, inline: the 41st step of each raises, in update 3 of 16-step rollouts.
    with pytest.raises(TrainingStopped) as stop:
        train(small_config(tmp_path / "run", env="rims-test/Crash-v0"))
    text = str(stop.value)
    assert "an environment failed during update 3" in text
    assert "RuntimeError: boom: the simulator crashed (faulty_envs.py:" in text


def test_an_env_that_fails_only_for_the_runs_own_seeds_stops_training_in_one_line(tmp_path):
    # Seeds 0-3 make levels (the probe passes); the run's seeds, 100 and 101, do not.
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped) as stop:
        train(small_config(run, env="rims-test/HighSeedNoLevel-v0", seed=100))
    text = str(stop.value)
    assert "an environment failed during update 1" in text
    assert "ValueError: no room for the goal (faulty_envs.py:" in text
    assert (run / "checkpoints" / "latest.pt").exists()  # the untrained policy, and the config
