"""The ``rims`` command line: a smoke run, resume, and one-line errors with exit code 2."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.checkpoint import load_checkpoint, load_policy, save_checkpoint
from policies import actor_critic, rims, rims_grad
from train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--num-envs", "2", "--num-steps", "16", "--num-minibatches", "1", "--update-epochs", "1",
    "--hidden-size", "4", "--num-units", "3", "--k", "2", "--feature-size", "8",
    "--no-progress", "--checkpoint-every", "1",
]  # fmt: skip


def scalars(run_dir: Path) -> dict[str, list]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_train_smoke_writes_config_events_and_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--total-steps", "96", "--run-dir", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "trained to step 96" in out
    config = json.loads((run / "config.json").read_text())
    assert config["env"] == "MiniGrid-DoorKey-5x5-v0" and config["core"] == "rims"
    assert config["num_envs"] == 2  # given flags override the preset
    ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert ckpt["global_step"] == 96 and ckpt["update"] == 3
    assert (
        sorted(p.name for p in (run / "checkpoints").glob("*.pt"))
        == [
            "best.pt",
            "latest.pt",
            "step_000000000032.pt",
            "step_000000000064.pt",
            "step_000000000096.pt",
        ]
        or not ckpt["best_return"]
    )  # best.pt only once an episode has finished
    tags = scalars(run)
    for tag in (
        "charts/SPS",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy",
        "losses/approx_kl",
        "rims/active_fraction_unit_0",
        "rims/active_fraction_unit_2",
        "perf/rollout_seconds",
        "perf/update_seconds",
    ):
        assert [e.step for e in tags[tag]] == [32, 64, 96], tag
    for tag in ("perf/rollout_seconds", "perf/update_seconds"):  # where each update's time went
        assert all(0 < e.value < 60 for e in tags[tag]), tag
    # How many units selection switched in each rollout, from the logged active fractions.
    fractions = [[e.value for e in tags[f"rims/active_fraction_unit_{u}"]] for u in range(3)]
    expected = [sum(0.05 <= f <= 0.95 for f in update) for update in zip(*fractions)]
    assert [e.value for e in tags["rims/switched_units"]] == expected
    # ... and the last of them closes the output.
    last = out.strip().splitlines()[-1]
    assert last.startswith("RIMs selection switched ")
    assert last.split()[3] == (str(int(expected[-1])) if expected[-1] else "none")
    # The checkpoint alone rebuilds the policy.
    loaded = load_policy(run)
    policy, cfg = loaded.policy, loaded.config
    assert cfg.core == "rims" and policy.core.k == 2
    out = policy.act(
        {
            "image": torch.zeros(1, 7, 7, 3, dtype=torch.uint8),
            "direction": torch.zeros(1, dtype=torch.long),
        },
        policy.initial_state(1),
        torch.ones(1, dtype=torch.bool),
    )
    assert out.actions.shape == (1,)


def test_resume_continues_the_step_counter_and_curves(tmp_path):
    run = tmp_path / "run"
    assert (
        main(["train", "--core", "gru", "--total-steps", "64", "--run-dir", str(run), *TINY]) == 0
    )
    # Starting again without --resume is refused; with --resume it continues to the new total.
    assert (
        main(["train", "--core", "gru", "--total-steps", "64", "--run-dir", str(run), *TINY]) == 2
    )
    assert main(["train", "--resume", "--run-dir", str(run), "--total-steps", "128"]) == 0
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"] == 128
    logged = scalars(run)
    assert [e.step for e in logged["charts/SPS"]] == [32, 64, 96, 128]
    # The learning rate anneals linearly to 0 at the total in force: update u of n gets
    # lr * (1 - (u - 1) / n), so extending 2 updates to 4 takes it from lr / 2 on, not from lr.
    lr = json.loads((run / "config.json").read_text())["learning_rate"]
    expected = [lr, lr / 2, lr / 2, lr / 4]
    assert [e.value for e in logged["charts/learning_rate"]] == pytest.approx(expected)
    # The resumed run's event file sorts after the first one even within the same second
    # (TensorBoard reads files in name order), so its purge marker and curve come last.
    first, resumed = sorted(run.glob("events.out.tfevents.*"))
    assert int(first.name.split(".")[3]) < int(resumed.name.split(".")[3])
    # Changing the architecture on resume is refused.
    assert main(["train", "--resume", "--run-dir", str(run), "--core", "lstm"]) == 2


def test_a_resumed_run_goes_on_from_the_returns_of_its_last_episodes(tmp_path):
    """The mean recent return (the final line, best.pt, --schedule-after-return) is over the
    last 100 episodes whether or not the run was stopped and resumed among them."""
    run = tmp_path / "run"
    flags = ["--shift", "max_steps=1", "--run-dir", str(run), *TINY]  # 32 episodes an update
    assert main(["train", "--total-steps", "64", *flags]) == 0
    first = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert len(first["recent_returns"]) == 64
    assert first["mean_recent_return"] == pytest.approx(np.mean(first["recent_returns"]))
    assert main(["train", "--resume", "--total-steps", "128", *flags]) == 0
    resumed = load_checkpoint(run / "checkpoints" / "latest.pt")["recent_returns"]
    assert len(resumed) == 100 and resumed[:36] == first["recent_returns"][-36:]


def test_resume_from_a_corrupt_latest_checkpoint_names_the_newest_readable_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--total-steps", "96", "--run-dir", str(run), *TINY]) == 0
    checkpoints = run / "checkpoints"
    latest = checkpoints / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:500])  # a disk fault: latest.pt cut short
    (checkpoints / "step_000000000096.pt").write_bytes(b"junk")  # and the newest numbered one
    resume = ["train", "--resume", "--run-dir", str(run), "--total-steps", "128"]
    capsys.readouterr()
    assert exit_code(resume) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "latest.pt is not a readable rims-rl checkpoint" in err
    assert "newest readable checkpoint is" in err and "step_000000000064.pt (step 64)" in err
    # Following the hint resumes from step 64.
    latest.write_bytes((checkpoints / "step_000000000064.pt").read_bytes())
    assert main(resume) == 0
    assert load_checkpoint(latest)["global_step"] == 128
    # With no readable numbered checkpoint the error is the plain one.
    latest.write_bytes(b"junk")
    for step in checkpoints.glob("step_*.pt"):
        step.unlink()
    assert exit_code(resume) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable rims-rl checkpoint" in err and "newest readable" not in err


def test_runs_saved_before_the_communication_gate_load_and_resume_as_linear(tmp_path):
    """Checkpoints and configs written before ``comm_gate`` existed had the linear
    communication output: they rebuild with it, evaluate and resume."""
    run = tmp_path / "old"
    given = ["--total-steps", "32", "--run-dir", str(run), "--no-comm-gate", *TINY]
    assert main(["train", *given]) == 0
    config = json.loads((run / "config.json").read_text())
    del config["comm_gate"]
    (run / "config.json").write_text(json.dumps(config))
    for path in (run / "checkpoints").glob("*.pt"):
        data = load_checkpoint(path)
        del data["config"]["comm_gate"], data["policy_spec"]["comm_gate"]
        save_checkpoint(path, data)
    core = load_policy(run).policy.core
    assert core.comm_gate is False and core.comm_out.shape[-1] == core.hidden_size  # no gate half
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    assert main(["train", "--resume", "--run-dir", str(run), "--total-steps", "64"]) == 0
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["policy_spec"]["comm_gate"] is False


def test_rims_triton_where_its_kernels_cannot_run_says_so_in_one_line(
    tmp_path, capsys, monkeypatch
):
    """Where the kernels cannot run (as on this CPU) --rims-triton trains with the usual steps
    and says why once, as a line of its own rather than a Python warning from the core."""
    import warnings

    from policies import triton_steps

    reason = "the kernels run on CUDA devices, not cpu"
    monkeypatch.setattr(triton_steps, "unavailable", lambda device: reason)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the core's own warning would raise
        code = main(["train", "--total-steps", "32", "--run-dir", str(tmp_path / "run"),
                     *TINY, "--rims-triton"])  # fmt: skip
    assert code == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "--rims-triton" in line]
    assert lines == [f"rims: --rims-triton: {reason}; running the eager steps instead"]


def test_resume_may_switch_on_compiled_steps(tmp_path, monkeypatch):
    """--rims-compile is a speed setting, not part of the run's fixed config."""
    wrappers = (actor_critic._COMPILED_ACT, rims._COMPILED_STEP, rims_grad._COMPILED_STEP_BACKWARD)
    run = tmp_path / "run"
    assert main(["train", "--total-steps", "64", "--run-dir", str(run), *TINY]) == 0
    for wrapper in wrappers:
        monkeypatch.setattr(wrapper, "compiled", None)
    resume = ["train", "--resume", "--run-dir", str(run), "--total-steps", "128", "--rims-compile"]
    assert main(resume) == 0
    # The resumed run acted and learnt through the compiled functions.
    assert all(w.compiled is not None and not w.failed for w in wrappers)
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"] == 128


def test_resume_may_change_what_does_not_change_learning_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--total-steps", "32", "--run-dir", str(run), *TINY]) == 0
    bookkeeping = ["--checkpoint-every", "3", "--keep-checkpoints", "1", "--image-every", "0",
                   "--env-timeout", "30", "--torch-threads", "1", "--rims-triton"]  # fmt: skip
    assert main(["train", "--resume", "--run-dir", str(run), "--total-steps", "64",
                 *bookkeeping]) == 0  # fmt: skip
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"] == 64
    assert main(["train", "--resume", "--run-dir", str(run), "--ent-coef", "0.5"]) == 2


def test_settings_that_do_not_change_learning_are_config_fields():
    from agents.config import NOT_LEARNED, TrainConfig
    from agents.groups import IGNORED

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert NOT_LEARNED < fields and IGNORED == NOT_LEARNED | {"seed"}
    # What a run learns is never among them.
    assert not NOT_LEARNED & {"env", "core", "seed", "learning_rate", "k", "num_units", "bptt"}


def test_tf32_holds_for_the_run_only(tmp_path, monkeypatch):
    """--tf32 lets cuBLAS use TF32 while the run trains (off without it), and the process's
    setting from before the run is back after it."""
    from agents import trainer

    matmul = torch.backends.cuda.matmul
    seen = []
    real_run = trainer.Trainer.run

    def run(self):
        seen.append(matmul.fp32_precision)
        return real_run(self)

    monkeypatch.setattr(trainer.Trainer, "run", run)
    before = matmul.fp32_precision
    for flag in (["--tf32"], []):
        assert main(["train", "--total-steps", "32", "--run-dir", str(tmp_path / str(flag)),
                     *flag, *TINY]) == 0  # fmt: skip
        assert matmul.fp32_precision == before
    assert seen == ["tf32", "ieee"]


def test_tf32_matmuls_restores_the_older_switch_where_torch_has_only_that(monkeypatch):
    """PyTorch before 2.9 has only ``allow_tf32``; the setting before is restored there too."""
    from agents.precision import tf32_matmuls

    class OldMatmul:  # the older torch.backends.cuda.matmul: no fp32_precision
        allow_tf32 = False

    monkeypatch.setattr(torch.backends.cuda, "matmul", OldMatmul())
    with tf32_matmuls(True):
        assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_overwrite_starts_afresh(tmp_path):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "notes.txt").write_text("mine")
    assert main(["train", "--total-steps", "64", "--run-dir", str(run), *TINY]) == 0
    # An --overwrite whose policy cannot be built is refused before the old run is removed.
    bad = ["--overwrite", "--encoder", "nature"]
    assert main(["train", "--total-steps", "32", "--run-dir", str(run), *bad, *TINY]) == 2
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"] == 64
    assert main(["train", "--total-steps", "32", "--run-dir", str(run), "--overwrite", *TINY]) == 0
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"] == 32
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are removed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "MiniGrid-DoorKey-5x5-v9"], "unknown env id"),
        (["--k", "7"], "--k must be in 1..num_units=6"),
        (["--num-envs", "0"], "--num-envs must be a positive integer"),
        (["--num-minibatches", "3"], "--num-minibatches=3 must divide"),
        (["--bptt", "5"], "--num-steps=128 must be a multiple of --bptt=5"),
        (["--env-timeout", "-1"], "--env-timeout must be >= 0"),
        (["--adv-std-floor", "-0.1"], "--adv-std-floor must be a finite number >= 0"),
        (["--adv-std-floor", "nan"], "--adv-std-floor must be a finite number, got nan"),
        (["--learning-rate", "inf"], "--learning-rate must be a finite number, got inf"),
        (["--env-timeout", "inf"], "--env-timeout must be a finite number, got inf"),
        (["--env", "CartPole-v1", "--rims-spatial"], "the policy does not fit CartPole-v1"),
        (["--encoder", "nature"], "the policy does not fit MiniGrid-DoorKey-5x5-v0"),
        (["--core", "transformer"], "invalid choice"),
        (["--core", "lstm", "--rims-bf16"], "--rims-bf16 needs --core rims"),
        (["--centre-keep-size"], "--centre-keep-size rescales centred features; it needs --cen"),
        (["--core", "gru", "--rims-compile"], "--rims-compile needs --core rims"),
        (["--selection-balance", "-0.1"], "--selection-balance must be a finite number >= 0"),
        (["--core", "lstm", "--selection-balance", "0.1"], "--selection-balance needs --core rims"),
        (["--k", "6", "--selection-balance", "0.1"], "--selection-balance needs --k below"),
        (["--core", "lstm", "--rims-triton"], "--rims-triton needs --core rims"),
        (["--rims-triton", "--input-heads", "2"], "--rims-triton: the kernels implement one input"),
        (["--rims-triton", "--attention-dropout", "0.1"], "no attention dropout, not 0.1"),
        (["--rims-triton", "--rims-spatial"], "read one input element, not a set"),
        (["--learning-rate", "fast"], "--learning-rate takes a number"),
        (["--seed", "-1"], "--seed must be an integer in 0..2^62, got -1"),
        (["--seed", str(2**64)], f"--seed must be an integer in 0..2^62, got {2**64}"),
        (["--frame-stack", "4"], "--frame-stack applies to Atari envs only, not MiniGrid-Door"),
        (["--env", "CartPole-v1", "--sticky-actions", "0"], "--sticky-actions applies to Atari"),
        (["--episodic-life"], "--episodic-life applies to Atari envs only"),
        (["--resume"], "holds no config.json; nothing to resume"),
        (["--resume", "--overwrite"], "holds no config.json"),
        (["--shift", "size"], "--shift: a shift is KEY=VALUE, got 'size'"),
        (["--shift", "size=5,x"], "--shift: shift size takes an integer >= 5, got 'x'"),
        (["--shift", "sticky=0.1"], "--shift: shift sticky does not apply to MiniGrid-DoorKey"),
        (["--shift", "view=5"], "the Minigrid CNN reads views of 7 x 7 cells or more, not 5"),
        (["--shift", "view=5,7"], "values must give the same observations and actions: view=5"),
        (["--env", "MiniGrid-MemoryS7-v0", "--shift", "size=7,8"], "with size=8 failed at a reset"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path, capsys):
    assert exit_code(["train", "--run-dir", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing is written before the config is valid


def test_seeds_up_to_2_62_train_and_eval_and_record_refuse_others(tmp_path, capsys):
    # NumPy's legacy generator refuses seeds of 2**32 and more: such a seed once ended in a
    # traceback.
    run = tmp_path / "run"
    assert main(["train", "--seed", str(2**40), "--total-steps", "32", "--run-dir", str(run),
                 *TINY]) == 0  # fmt: skip
    for command in (["eval", str(run)], ["record", str(run), "--out", str(tmp_path / "x.gif")]):
        for seed in ("-1", str(2**64)):  # torch's seeds are int64: 2**64 was a traceback
            capsys.readouterr()
            assert exit_code([*command, "--seed", seed]) == 2
            err = capsys.readouterr().err.strip()
            assert f"--seed: expected an integer in 0..2^62, got '{seed}'" in err
            assert len(err.splitlines()) == 1
    assert not (tmp_path / "x.gif").exists()


def test_unwritable_run_dir_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert exit_code(["train", "--run-dir", str(blocker / "run"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write the run directory" in err and len(err.splitlines()) == 1


def test_resume_without_run_dir(capsys):
    assert exit_code(["train", "--resume"]) == 2
    assert "--resume needs --run-dir" in capsys.readouterr().err


def exit_code(argv: list[str]) -> int:
    """``main``'s return code, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exit:
        return int(exit.code)


def test_script_exit_codes_in_a_real_process(tmp_path):
    bad = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--env", "NoSuchEnv-v0", "--run-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["rims: error: unknown env id 'NoSuchEnv-v0'"]
    missing = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--resume", "--run-dir", str(tmp_path / "none")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2 and "nothing to resume" in missing.stderr
    assert "Traceback" not in missing.stderr
    # An Atari env is made before this error: ALE's banner (written once a process, by C++ to
    # the file descriptor, so only a fresh process shows it) must not come before the line.
    atari = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--env", "ALE/Pong-v5", "--encoder",
         "minigrid-cells", "--run-dir", str(tmp_path / "pong")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert atari.returncode == 2
    assert atari.stderr.startswith("rims: error: the policy does not fit ALE/Pong-v5")
    assert len(atari.stderr.strip().splitlines()) == 1


IMPORTED = """
import sys, train
try:
    code = train.main(sys.argv[1:])
except SystemExit as exit_:  # --help
    code = exit_.code
print(*[m for m in ("torch", "torch._dynamo") if m in sys.modules])
sys.exit(code)
"""


def test_help_and_bad_flags_skip_torch_and_eval_skips_the_compiler(tmp_path):
    """On a 2-core CPU torch takes 2 s to import and ``torch._dynamo`` 2 s more: ``rims --help``
    and a bad flag need neither, and evaluating needs no compiler (training's optimizer and
    ``--compile`` import it)."""
    run = tmp_path / "run"
    assert main(["train", "--total-steps", "32", "--run-dir", str(run), *TINY]) == 0
    for argv, code, imported in [
        (["--help"], 0, ""),
        (["train", "--help"], 0, ""),
        (["train", "--k", "9"], 2, ""),
        (["train", "--env", "NoSuchEnv-v0"], 2, ""),
        (["eval", str(run), "--episodes", "1"], 0, "torch"),
    ]:
        done = subprocess.run([sys.executable, "-c", IMPORTED, *argv], capture_output=True,
                              text=True, cwd=ROOT)  # fmt: skip
        assert done.returncode == code, done.stderr[-2000:]
        assert done.stdout.splitlines()[-1] == imported, argv


@pytest.mark.parametrize(
    "given, message",
    [
        ({"norm_adv": "False"}, "--norm-adv must be true or false, got 'False'"),
        ({"num_envs": True}, "--num-envs must be an integer, got True"),
        ({"learning_rate": "1e-3"}, "--learning-rate must be a finite number, got '1e-3'"),
        ({"target_kl": "none"}, "--target-kl must be a finite number, got 'none'"),
        ({"gamma": float("nan")}, "--gamma must be a finite number, got nan"),
        ({"cell": 3}, "--cell must be a string, got 3"),
    ],
)
def test_a_config_field_of_the_wrong_type_is_refused(given, message):
    """Configs built in code (bench --set, a hand-edited config.json) skip argparse; a string
    "False" in a bool field would be truthy and silently mean True."""
    from agents.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve_config(given)
    assert resolve_config({"env_timeout": 5, "target_kl": None}).env_timeout == 5  # int as float


def test_a_hand_edited_config_or_checkpoint_of_the_wrong_type_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--total-steps", "32", *TINY]) == 0
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "comm_gate": "false"}))
    assert exit_code(["train", "--run-dir", str(run), "--resume", "--total-steps", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--comm-gate must be true or false, got 'false'" in err[0]
    # The same in a checkpoint's policy spec (which rebuilds the network for eval and record).
    checkpoint = run / "checkpoints" / "latest.pt"
    data = load_checkpoint(checkpoint)
    data["policy_spec"]["spatial"] = "false"
    save_checkpoint(checkpoint, data)
    assert exit_code(["eval", str(checkpoint), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "policy spec field spatial must be true or false, got 'false'" in err[0]
    )


def test_minigrid_preset_trains_on_chunks_and_a_short_rollout_is_one_chunk():
    from agents.config import resolve_config

    default = resolve_config({})
    assert default.env.startswith("MiniGrid") and default.bptt == 32
    assert default.sequence_length == 32 and default.num_sequences == 16 * 128 // 32
    assert resolve_config({"num_steps": 16}).sequence_length == 16  # bptt >= rollout: whole
    assert resolve_config({"bptt": 0}).sequence_length == 128
    assert resolve_config({"env": "CartPole-v1"}).bptt == 0  # other families: whole rollouts


def test_minigrid_preset_doubles_the_entropy_bonus_and_a_flag_still_wins():
    from agents.config import resolve_config

    assert resolve_config({}).ent_coef == 0.02
    assert resolve_config({"ent_coef": 0.01}).ent_coef == 0.01
    assert resolve_config({"env": "CartPole-v1"}).ent_coef == 0.0


def test_minigrid_preset_floors_the_advantage_scale_and_old_runs_resume_without_it(tmp_path):
    """Only the Minigrid preset sets a floor; a run saved before the field existed trained
    without one and resumes without one."""
    from agents.config import resolve_config

    assert resolve_config({}).adv_std_floor == 0.02
    assert resolve_config({"adv_std_floor": 0.0}).adv_std_floor == 0.0
    assert resolve_config({"env": "CartPole-v1"}).adv_std_floor == 0.0
    assert resolve_config({"env": "ALE/Breakout-v5"}).adv_std_floor == 0.0

    run = tmp_path / "old"
    assert main(["train", "--total-steps", "32", "--run-dir", str(run), *TINY]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["adv_std_floor"] == 0.02
    del config["adv_std_floor"]
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", "--run-dir", str(run), "--total-steps", "64"]) == 0
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["config"]["adv_std_floor"] == 0.0


def test_help_names_the_presets_that_set_a_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    assert "parallel envs (default: 16; gym 8; atari 8)" in text
    assert "(default: 0.01; minigrid 0.02; gym 0.0; atari 0.01)" in text  # --ent-coef
    assert "(default: 0; minigrid 32)" in text  # --bptt
    assert "frames stacked per observation (1: memory is the core's) (default: 1)" in text


def test_version_names_the_packages_a_bug_report_needs(capsys, monkeypatch):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    (line,) = capsys.readouterr().out.splitlines()  # one line, however narrow the terminal
    assert line.startswith("rims-rl ")
    assert f"torch {version('torch')}, gymnasium {version('gymnasium')}, " in line
    assert f"; Python {sys.version.split()[0]})" in line
    # python train.py --version is the same, not `train --version`.
    monkeypatch.setattr(sys, "argv", ["train.py", "--version"])
    from train import script_main

    with pytest.raises(SystemExit):
        script_main()
    assert capsys.readouterr().out.strip() == line


def test_train_help_groups_the_flags_in_sections(capsys):
    from agents.config import HELP_SECTIONS, TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    section, under = None, {}
    for line in capsys.readouterr().out.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            section = line[:-1]
        elif line.startswith("  --") and section is not None:
            under[line.split()[0].rstrip(",")] = section
    assert list(dict.fromkeys(under.values())) == list(HELP_SECTIONS.values())
    # Every field has its flag, in the section that the last section start before it names.
    current = None
    for field in dataclasses.fields(TrainConfig):
        current = HELP_SECTIONS.get(field.name, current)
        assert under["--" + field.name.replace("_", "-")] == current, field.name
    assert under["--k"] == "RIMs (--core rims)" and under["--frame-stack"] == "Atari and rewards"
