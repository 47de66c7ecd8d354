"""The GPU check script runs (against the CPU here), so a lent GPU's minutes are not lost to it;
the learning bench's criterion."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tests.faulty_envs  # noqa: F401  (registers rims-test/* envs)
from agents.checkpoint import load_policy
from agents.mechanisms import inspect_mechanisms
from agents.selection import switched_units
from bench import (
    core_speed,
    cuda_check,
    cue_probe,
    learn_minigrid,
    step_kernels,
    triton_step,
    update_speed,
)
from tests.test_cli import TINY
from train import main


def test_cuda_check_passes_against_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cuda_check.py", "--device", "cpu"])
    assert cuda_check.main() == 0
    out = capsys.readouterr().out
    assert "0 failure(s)" in out and "FAIL" not in out
    assert out.count("ok  ") == 2 * 12  # every check of both cells ran


def test_cuda_check_only_compiled_runs_those_checks(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cuda_check.py", "--device", "cpu", "--only", "compiled"])
    assert cuda_check.main() == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:4] in ("ok  ", "FAIL")]
    assert len(lines) == 4 and all(
        line.startswith("ok   ") and "compiled" in line for line in lines
    )


def test_cuda_check_only_triton_where_the_kernels_cannot_run_says_why(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(sys, "argv", ["cuda_check.py", "--device", "cpu", "--only", "triton"])
    assert cuda_check.main() == 2
    assert capsys.readouterr().out.splitlines()[-1].startswith("skip lstm: Triton steps (")


@pytest.mark.skipif(triton_step.kernels is None, reason="needs Triton (its interpreter on a CPU)")
def test_cuda_check_only_triton_passes_in_the_interpreter():
    import os
    import subprocess
    from pathlib import Path

    script = Path(cuda_check.__file__)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--only", "triton"],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line[:4] in ("ok  ", "FAIL")]
    assert len(lines) == 4 and all("Triton steps" in line for line in lines)
    assert all(line.startswith("ok   ") for line in lines)


def test_the_fp32_lstm_baseline_switches_off_cudnn_tf32_for_its_rows_only():
    rnn = torch.backends.cudnn.rnn
    before = rnn.fp32_precision
    with core_speed.tf32_cudnn_rnns(False):
        assert rnn.fp32_precision == "ieee"
    assert rnn.fp32_precision == before


def test_cuda_check_without_cuda_says_so(monkeypatch, capsys):
    if cuda_check.torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.setattr(sys, "argv", ["cuda_check.py"])
    assert cuda_check.main() == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_learn_minigrid_counts_a_threshold_only_when_it_holds():
    first = learn_minigrid.first_sustained_step
    lucky_start = [(2, 0.95), (4, 0.1), (6, 0.91), (8, 0.93), (10, 0.89), (12, 0.9), (14, 0.92),
                   (16, 0.95)]  # fmt: skip
    assert first(lucky_start, 0.9, 3) == 12  # the 0.89 broke the streak that began at 6
    assert first(lucky_start, 0.9, 1) == 2
    assert first([(2, 0.5), (4, 0.95), (6, 0.95)], 0.9, 3) is None
    assert first([], 0.9, 3) is None


def test_learn_minigrid_takes_the_median_over_runs_counting_never_as_latest():
    median = learn_minigrid.median_reached
    # The stop-31 size-kept RIMs runs: 100k, 109k, 111k | 143k, 152k, 170k.
    steps = [108544, 100352, 143360, 151552, 169984, 110592]
    assert median(steps) == (110592 + 143360) / 2
    assert median([300, None, 100]) == 300  # the run that never reached it is the latest
    assert median([100, 200, None, None]) is None  # half never did: no median step
    assert median([]) is None


def test_learn_minigrid_reads_config_overrides():
    parse = learn_minigrid.parse_override
    assert parse("k=5") == ("k", 5)
    assert parse("learning-rate=5e-4") == ("learning_rate", 5e-4)
    assert parse("cell=gru") == ("cell", "gru")  # a bare word stays a string
    assert parse("target_kl=null") == ("target_kl", None)
    # Python's spellings too: JSON knows only false, and the string "False" is truthy.
    assert parse("norm_adv=False") == ("norm_adv", False)
    assert parse("comm_gate=TRUE") == ("comm_gate", True)
    assert parse("target_kl=None") == ("target_kl", None)
    for bad in ("k", "=5"):
        with pytest.raises(learn_minigrid.argparse.ArgumentTypeError):
            parse(bad)


def test_learn_minigrid_evaluates_each_runs_target_or_the_env_alone(tmp_path, monkeypatch):
    import agents.evaluate

    played, results = [], []
    evaluate = agents.evaluate.evaluate

    def recorded(*args, **kwargs):
        played.append(tuple(kwargs["shifts"]))
        results.append(evaluate(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(agents.evaluate, "evaluate", recorded)
    tiny = dict(num_envs=2, num_steps=16, num_minibatches=1, update_epochs=1, hidden_size=4,
                num_units=3, k=2, feature_size=8, shift=("size=6",))  # fmt: skip
    # The shifts; none where the schedule ends at 0 (the run's target); none when told.
    cases = [(None, False), ("0:1,32:0", False), ("0:1,32:0.5", True)]
    for i, (schedule, unshifted) in enumerate(cases):
        run = learn_minigrid.train_and_evaluate(
            "MiniGrid-DoorKey-5x5-v0", "lstm", 1, 64, 2, tmp_path / f"r{i}", 1,
            {**tiny, "shift_schedule": schedule}, eval_unshifted=unshifted,
        )  # fmt: skip
        assert 0.0 <= run.eval_return <= 1.0
        # MiniGrid defines success (a positive return): the share of the episodes that got one
        positive = [r > 0 for r in results[-1].returns]
        assert run.eval_success == pytest.approx(sum(positive) / len(positive))
    assert played == [(("size", "6"),), (), ()]


def test_learn_minigrid_records_a_diverged_run_instead_of_ending_the_sweep(tmp_path):
    """A run whose loss turns NaN comes back as a row that says so, with its last good
    checkpoint evaluated, so the other runs of a sweep and the table are not lost."""
    tiny = dict(num_envs=2, num_steps=16, num_minibatches=1, update_epochs=2, checkpoint_every=1,
                hidden_size=4, num_units=3, k=2, feature_size=8)  # fmt: skip
    # Each of the 2 envs steps 16 times per update; rewards turn NaN at its 41st step.
    run = learn_minigrid.train_and_evaluate(
        "rims-test/NaNReward-v0", "rims", 1, 320, 2, tmp_path / "run", 1, tiny
    )
    assert run.stopped is not None and "NaN/inf in update 3" in run.stopped
    assert run.reached is None and run.steps_per_second != run.steps_per_second  # nan
    assert 0.0 <= run.eval_return <= 1.0  # the update-2 checkpoint, on fresh (finite) episodes
    assert run.eval_success is None  # a test env, which defines no success
    # The units switched over that evaluation are those rims mechanisms finds in its episodes
    # (two here: 0.25 and 0.75 of the steps).
    loaded = load_policy(tmp_path / "run")
    report = inspect_mechanisms(loaded, loaded.config.train_row, episodes=2, seed=1)
    assert run.switched == len(switched_units(report.rates)) > 0


# A sweep killed outright while its one worker is in a run (a stand-in that stops, as the
# trainer does, on SIGTERM). The run must be stopped through its handler, then the worker end.
KILLED_SWEEP = """
import multiprocessing, os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from bench.learn_minigrid import stop_when_orphaned
busy, stopped = sys.argv[1:]
RUN = f'''
import pathlib, time
from agents.trainer import StopSignals
with StopSignals() as signals:
    pathlib.Path({busy!r}).touch()
    while signals.received is None:
        time.sleep(0.01)
pathlib.Path({stopped!r}).touch()
'''
pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                           initializer=stop_when_orphaned, initargs=(os.getpid(), 0.05))
print(pool.submit(os.getpid).result(), flush=True)
pool.submit(exec, RUN)
while not Path(busy).exists():
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""


def process_state(pid: int) -> str | None:
    """Linux: a process's state letter (``Z`` a zombie), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_learn_minigrid_workers_stop_when_the_sweep_is_killed(tmp_path):
    """Killing learn_minigrid.py's process alone must not leave its workers training."""
    root = Path(__file__).resolve().parents[1]
    out, err = tmp_path / "out", tmp_path / "err"  # files: the worker holds no pipe of ours
    with out.open("w") as stdout, err.open("w") as stderr:
        code = subprocess.run(
            [sys.executable, "-c", KILLED_SWEEP, str(tmp_path / "busy"), str(tmp_path / "stopped")],
            cwd=root,
            stdout=stdout,
            stderr=stderr,
            timeout=120,
        ).returncode
    assert code == -signal.SIGKILL, err.read_text()
    worker = int(out.read_text().split()[0])
    try:
        deadline = time.monotonic() + 30  # the task alone would keep it 600 s
        while process_state(worker) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_state(worker) in (None, "Z"), "the orphaned worker is still running"
        assert (tmp_path / "stopped").exists()  # the run stopped as on Ctrl-C, not killed
    finally:
        if process_state(worker) not in (None, "Z"):
            os.kill(worker, signal.SIGKILL)


def test_step_kernels_counts_the_launches_of_triton_and_cpp_code():
    triton = """
def call(args):
    arg0_1, arg1_1 = args
    # Topologically Sorted Source Nodes: [hq], Original ATen: [aten.bmm]
    extern_kernels.bmm(arg0_1, arg1_1, out=buf0)
    triton_per_fused_sum_0.run(buf0, buf1, 64, 16, stream=stream0)
    buf2 = torch.ops.aten.topk.default(buf1, 4, 0, False, True)
    del buf0
    triton_poi_fused_where_1.run(buf1, 128, stream=stream0)
    return (buf1, )

def benchmark_compiled_module():
    triton_poi_fused_where_1.run(buf1, 128)
"""
    got = step_kernels.census(triton)
    assert (got.fused, got.extern) == (2, 2)
    assert got.names == ["bmm", "triton_0", "topk", "triton_1"]
    cpp = (
        "def call(args):\n    cpp_fused_mul_0(arg0_1, buf0)\n    extern_kernels.baddbmm(a, b, c)\n"
    )
    assert step_kernels.census(cpp) == step_kernels.Census(1, 1, ["cpp_0", "baddbmm"])
    assert step_kernels.census("no call here") == step_kernels.Census(0, 0, [])
    # With graph partitions the launches sit in partition_N functions; `call` may be a method.
    partitioned = """
triton_poi_fused_0 = async_compile.triton('triton_poi_fused_0', '''
def triton_poi_fused_0(in_ptr0, out_ptr0, xnumel, XBLOCK : tl.constexpr):
    tmp0 = tl.load(in_ptr0 + (x0), xmask)
''', device_str='cuda')

def partition_0(args):
    arg0_1, = args
    with torch.cuda._DeviceGuard(0):
        torch.cuda.set_device(0)
        buf0 = empty_strided_cuda((4, ), (1, ), torch.float32)
        triton_poi_fused_0.run(arg0_1, buf0, 4, stream=stream0)
        extern_kernels.mm(buf0, arg0_1, out=buf1)
    return (buf1, )

class Runner:
    def call(self, args):
        buf2 = torch.ops.aten.topk.default(args[0], 2)
        (buf1, ) = self.partitions[0](args)
        return (buf1, buf2)
"""
    got = step_kernels.census(partitioned)
    assert got == step_kernels.Census(1, 2, ["triton_0", "mm", "topk"])


def test_a_compiled_training_step_is_its_three_matmuls_and_three_fused_kernels_each_way():
    """Each step, forward and backward, launches its three matmuls and at most three fused
    kernels between them: the episode-start reset and the RIM selection (a topk before) fuse
    into the kernels around the matmuls. The matmuls are plain ``bmm``: a ``baddbmm`` first
    copies its addend into its output, a hidden kernel of its own on a GPU."""
    codes = step_kernels.step_codes("lstm", 1, True, step_kernels.torch.device("cpu"))
    counts = [c for c in map(step_kernels.census, codes) if c.fused + c.extern]
    assert len(counts) == 2  # the forward step and the backward step
    for count in counts:
        externs = [n for n in count.names if not n.startswith(("cpp_", "triton_"))]
        assert externs == ["bmm", "bmm", "bmm"]
        assert count.fused <= 3


def test_an_eager_step_runs_the_fused_derivatives_not_their_chains():
    """The eager backward step takes sigmoid, tanh and softmax gradients in one op each (46
    kernels per LSTM step, against 65 written out as products); the forward runs 34."""
    forward, backward = step_kernels.eager_ops_per_step("lstm", step_kernels.torch.device("cpu"))
    assert forward <= 34 and backward <= 47


def test_the_triton_step_script_serves_the_kernels_configuration_only():
    from policies import RIMs

    base = dict(input_size=8, num_units=6, k=4, hidden_size=4, dropout=0.0)
    assert triton_step.supported(RIMs(**base))
    assert triton_step.supported(RIMs(**base, cell="gru"))
    assert not triton_step.supported(RIMs(**base, input_heads=2))
    assert triton_step.supported(RIMs(**base, comm_gate=False))
    assert triton_step.supported(RIMs(**base, comm_heads=3, comm_key_size=24))  # any sizes
    assert not triton_step.supported(RIMs(**{**base, "dropout": 0.1}).train())
    assert triton_step.supported(RIMs(**{**base, "dropout": 0.1}).eval())  # no dropout then


@pytest.mark.skipif(triton_step.kernels is not None, reason="Triton is installed here")
def test_the_triton_step_script_without_triton_says_so(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["triton_step.py", "--device", "cpu", "--check"])
    assert triton_step.main() == 2
    assert "Triton is not installed" in capsys.readouterr().out


@pytest.mark.skipif(triton_step.kernels is None, reason="needs Triton")
def test_the_triton_step_script_on_a_cpu_without_the_interpreter_says_so(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(sys, "argv", ["triton_step.py", "--device", "cpu", "--check"])
    assert triton_step.main() == 2
    assert (
        capsys.readouterr().out
        == "--device cpu needs Triton's interpreter: set TRITON_INTERPRET=1\n"
    )


@pytest.mark.skipif(triton_step.kernels is None, reason="needs Triton (its interpreter on a CPU)")
def test_the_triton_steps_equal_the_library_steps_in_the_script_in_the_interpreter():
    """Every output and saved intermediate of four steps, and every gradient their backward
    steps hand on, float64 and float32, with and without episode starts; and the timed loops
    run (once, untimed, on a CPU). Triton picks its interpreter at import: a process of its
    own."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(triton_step.__file__)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    args = ["--device", "cpu", "--check", "--time", "--profile", "--T", "3", "--batch", "4"]
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert len([line for line in lines if line.startswith("ok   step")]) == 16
    assert len([line for line in lines if line.startswith("ok   backward step")]) == 16
    assert len([line for line in lines if line.endswith("nan ms")]) == 6  # 3 loops each way
    assert any("Self CPU time total" in line for line in lines)  # the profile's table


@pytest.mark.skipif(triton_step.kernels is None, reason="needs Triton")
def test_the_triton_kernels_compile_for_a_gpu_without_one(monkeypatch, capsys):
    """Triton's whole pipeline, to an sm_90 cubin through its bundled ptxas, for each kernel
    and warp count in float32, and at 4 warps for a GRU, for the linear communication output and
    in float64: what its interpreter cannot say (it
    takes code the compiler rejects). At the default 4 warps no kernel spills to local
    memory."""
    monkeypatch.setattr(sys, "argv", ["triton_step.py", "--aot"])
    assert triton_step.main() == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if line.startswith("ok   sm_90 lstm fp32 ")]) == 6 * 4
    assert len([line for line in lines if line.startswith("ok   sm_90 gru fp32 ")]) == 6
    assert len([line for line in lines if line.startswith("ok   sm_90 linear fp32 ")]) == 6
    assert len([line for line in lines if line.startswith("ok   sm_90 lstm fp64 ")]) == 6
    assert all("local 0" in line for line in lines if " 4 warps:" in line)


def test_the_triton_step_script_times_each_warp_count_and_restores_the_library_setting():
    from policies import triton_steps

    before = dict(triton_steps.NUM_WARPS)
    with triton_step.all_warps(2):
        assert set(triton_steps.NUM_WARPS.values()) == {2}
    assert triton_steps.NUM_WARPS == before
    with triton_step.all_warps(None):  # the library's own setting
        assert triton_steps.NUM_WARPS == before
    assert triton_step._kernel_rows((2, 8)) == [("triton, 2 warps", 2), ("triton, 8 warps", 8)]
    assert triton_step._kernel_rows(()) == [("triton kernels", None)]


def test_update_speed_times_the_four_cases(capsys):
    medians = update_speed.main(["--repeats", "1"])
    assert len(medians) == 4 and all(seconds > 0 for seconds in medians.values())
    printed = capsys.readouterr().out
    assert "autograd, balance 0.1" in printed and "1.00x" in printed


def test_the_cue_probe_reads_a_written_cue_and_not_noise():
    rng = np.random.default_rng(0)
    cues = rng.integers(0, 2, 400)
    noise = rng.normal(size=(400, 30))
    written = noise.copy()
    written[:, 7] += 3.0 * (2 * cues - 1)  # one direction holds the cue
    fitted = cue_probe.fit_probe(written[:200], cues[:200])
    assert cue_probe.balanced_accuracy(fitted.predict(written[200:]), cues[200:]) > 0.95
    fitted = cue_probe.fit_probe(noise[:200], cues[:200])
    assert abs(cue_probe.balanced_accuracy(fitted.predict(noise[200:]), cues[200:]) - 0.5) < 0.15
    # balanced over the cues: a probe that always says "key" scores 0.5 however many keys
    lopsided = np.array([0] * 90 + [1] * 30)
    assert cue_probe.balanced_accuracy(np.zeros(120, dtype=np.int64), lopsided) == 0.5
    assert cue_probe.balanced_accuracy(np.zeros(40, dtype=np.int64), lopsided[-40:]) is None


def test_the_cue_probe_picks_each_mechanisms_state_and_reports_a_run(tmp_path, capsys):
    run = tmp_path / "memory"
    assert main(["train", "--env", "MiniGrid-MemoryS7-v0", "--total-steps", "32",
                 "--run-dir", str(run), *TINY]) == 0  # fmt: skip
    loaded = load_policy(run)
    core = loaded.policy.core
    h, c = (torch.randn(1, core.num_units, core.hidden_size) for _ in range(2))
    flat = torch.cat([h.flatten(1), c.flatten(1)], 1)[0].numpy()  # as the recorder keeps it
    columns = cue_probe.unit_columns(loaded)
    assert len(columns) == core.num_units
    for u, picked in enumerate(columns):
        assert np.array_equal(flat[picked], torch.cat([h[0, u], c[0, u]]).numpy())
    episodes = cue_probe.record(loaded, 7, 8, seed=0)
    assert len(episodes) == 8
    for episode in episodes:
        assert len(episode.states) == len(episode.distances)
        assert all(d >= 0 for d in episode.distances)  # never past the junction's column
        assert 1 <= episode.lowest <= episode.start <= 4  # size 7: the hallway ends in column 4
        assert episode.outcome in ("success", "failure", "cut")
    capsys.readouterr()
    cue_probe.report(loaded, [7], 8, seed=0)
    out = capsys.readouterr().out
    assert "memory (rims), 8 episodes a size:" in out and "u0" in out


def test_the_cue_probe_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    run, memory = tmp_path / "doorkey", tmp_path / "memory"
    assert main(["train", "--total-steps", "32", "--run-dir", str(run), *TINY]) == 0
    assert main(["train", "--env", "MiniGrid-MemoryS7-v0", "--total-steps", "32",
                 "--run-dir", str(memory), *TINY]) == 0  # fmt: skip
    capsys.readouterr()
    for argv, message in (
        ([str(run)], "was trained on MiniGrid-DoorKey-5x5-v0, not on a MiniGrid-Memory env"),
        ([str(tmp_path / "none")], "no run directory or checkpoint file"),
        ([str(memory), "--sizes", "8"], "assert height % 2 == 1"),
        ([str(memory), "--sizes", "3"], "shift size takes an integer >= 5, got '3'"),
    ):
        monkeypatch.setattr(sys, "argv", ["cue_probe.py", *argv])
        assert cue_probe.main() == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
