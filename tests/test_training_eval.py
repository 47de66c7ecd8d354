"""Evaluation during training (``--eval-every``): what it logs, that it changes nothing the run
learns, and one-line errors for suites that do not fit."""

from __future__ import annotations

import json

import pytest
import torch

import tests.faulty_envs  # noqa: F401  (registers rims-test/* envs)
from agents.checkpoint import load_checkpoint
from agents.config import resolve_config
from agents.evaluate import EvalResult, evaluate
from agents.training_eval import (
    EvalTarget,
    RowResult,
    TrainingEvaluator,
    eval_targets,
    summary_line,
    tag_name,
)
from envs.factory import make_env
from envs.suites import SuiteRow
from policies.actor_critic import ActorCritic
from policies.spec import PolicySpec
from tests.test_cli import TINY, scalars
from train import main


def suite_file(tmp_path, *rows: dict) -> str:
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"mine": {"description": "", "rows": list(rows)}}))
    return str(path)


def test_evaluating_during_training_changes_nothing_the_run_learns(tmp_path, capsys):
    suite = suite_file(tmp_path, {"env": "$RUN"}, {"env": "$RUN", "shifts": ["size=6"]})
    common = ["--env", "MiniGrid-Empty-5x5-v0", "--total-steps", "96", *TINY]
    assert main(["train", "--run-dir", str(tmp_path / "plain"), *common]) == 0
    watched = tmp_path / "watched"
    assert main(["train", "--run-dir", str(watched), *common, "--eval-every", "2",
                 "--eval-episodes", "3", "--eval-suite", suite]) == 0  # fmt: skip
    plain = load_checkpoint(tmp_path / "plain" / "checkpoints" / "latest.pt")
    after = load_checkpoint(watched / "checkpoints" / "latest.pt")
    for name, value in plain["model"].items():
        assert torch.equal(value, after["model"][name]), name
    assert torch.equal(plain["torch_rng"], after["torch_rng"])
    # 3 updates of 32 steps: evaluated after updates 2 and 3 (the last), the $RUN row once.
    logged = scalars(watched)
    for tag in ("eval/return", "eval/success_rate", "eval/length", "eval/truncated_rate",
                "eval/size=6/return",
                "eval/shifted_return", "perf/eval_seconds"):  # fmt: skip
        assert [s.step for s in logged[tag]] == [64, 96], tag
    assert not any(tag.startswith("eval") for tag in scalars(tmp_path / "plain"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval at")]
    assert [line.split(",")[0] for line in lines] == [
        "eval at step 64 (3 episodes a row",
        "eval at step 96 (3 episodes a row",
    ]
    assert "| size=6 " in lines[0]
    # best.pt is the evaluation with the highest eval/return (the first of equals), not the
    # best training return.
    own = logged["eval/return"]
    chosen = max(own, key=lambda e: e.value)  # max keeps the first of equal values
    best = load_checkpoint(watched / "checkpoints" / "best.pt")
    assert best["global_step"] == chosen.step
    assert best["best_eval_return"] == pytest.approx(chosen.value, abs=1e-6)
    assert plain.get("best_eval_return") is None
    # The last evaluation is the final policy's: rims eval with the run's seed and envs agrees.
    out = tmp_path / "eval.json"
    assert main(["eval", str(watched), "--shift", "size=6", "--episodes", "3", "--seed", "1",
                 "--num-envs", "2", "--json", str(out)]) == 0  # fmt: skip
    (row,) = json.loads(out.read_text())
    assert logged["eval/size=6/return"][-1].value == pytest.approx(row["mean_return"], abs=1e-6)


def test_a_row_that_fails_mid_run_is_reported_and_left_out(tmp_path, capsys):
    # The probe's seeds (0-3) make levels; the evaluation's far-off seeds do not.
    suite = suite_file(tmp_path, {"env": "$RUN"}, {"env": "rims-test/HighSeedNoLevel-v0"})
    run = tmp_path / "run"
    code = main(["train", "--env", "rims/CueMemory-v0", "--total-steps", "96", "--run-dir",
                 str(run), *TINY, "--eval-every", "1", "--eval-episodes", "2",
                 "--eval-suite", suite])  # fmt: skip
    assert code == 0  # training went on
    err = [line for line in capsys.readouterr().err.splitlines() if "--eval-every" in line]
    assert len(err) == 1 and "left out of later evaluations" in err[0]
    assert "HighSeedNoLevel" in err[0]
    logged = scalars(run)
    assert [s.step for s in logged["eval/return"]] == [32, 64, 96]
    assert not any("HighSeedNoLevel" in tag for tag in logged)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eval-suite", "doorkey"], "--eval-suite needs --eval-every N"),
        (["--eval-every", "-1"], "--eval-every must be >= 0"),
        (["--eval-every", "1", "--eval-episodes", "0"], "--eval-episodes must be >= 1"),
        (["--eval-every", "1", "--eval-suite", "nope"], "unknown suite 'nope'"),
        # DoorKey's policy reads 7 actions; CartPole has 2 and a flat observation.
        (["--eval-every", "1", "--eval-suite", "ROWS:CartPole-v1"], "--eval-suite: the policy"),
        # Memory envs need odd sizes: the level generator asserts.
        (["--eval-every", "1", "--eval-suite", "ROWS:MiniGrid-MemoryS7-v0 size=8"],
         "size=8 failed at a reset with seed 0"),
    ],
)  # fmt: skip
def test_eval_flags_and_suites_that_do_not_fit_are_one_line(tmp_path, capsys, flags, message):
    if flags[-1].startswith("ROWS:"):
        env, *shifts = flags[-1].removeprefix("ROWS:").split()
        flags = [*flags[:-1], suite_file(tmp_path, {"env": env, "shifts": shifts})]
        if env.startswith("MiniGrid-Memory"):
            flags = ["--env", "MiniGrid-MemoryS7-v0", *flags]
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--total-steps", "32", *TINY, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rims: error: ") and len(err.splitlines()) == 1, err
    assert message in err
    assert not run.exists()  # nothing written


def test_eval_can_be_added_when_resuming(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--total-steps", "32", *TINY]) == 0
    assert main(["train", "--resume", "--run-dir", str(run), "--total-steps", "64",
                 "--eval-every", "1", "--eval-episodes", "1"]) == 0  # fmt: skip
    assert [s.step for s in scalars(run)["eval/return"]] == [64]
    assert "eval at step 64 (1 episode a row, " in capsys.readouterr().out


def test_a_stop_signal_gives_up_the_evaluation_between_rows():
    suite = SuiteRow("rims/CueMemory-v0")
    config = resolve_config(dict(env="rims/CueMemory-v0", hidden_size=4, num_units=3, k=2,
                                 feature_size=8, eval_every=1, eval_episodes=2))  # fmt: skip
    env = make_env(config.env)
    policy = ActorCritic(env.observation_space, int(env.action_space.n), config.policy_spec())
    targets = eval_targets(config, env.observation_space, policy.num_actions)
    env.close()
    assert [t.row for t in targets] == [suite]
    evaluator = TrainingEvaluator(config, targets * 3)  # three rows
    asked = []

    def stop_after_one_row() -> bool:
        asked.append(True)
        return len(asked) > 1

    assert evaluator.evaluate(policy, should_stop=stop_after_one_row) == []
    assert len(asked) == 2  # asked before each row; the second answer gave up the rest
    assert len(evaluator.evaluate(policy)) == 3  # the rows are kept for the next evaluation


def test_tag_names():
    train_env = "MiniGrid-DoorKey-5x5-v0"
    assert tag_name(SuiteRow(train_env), train_env) == ""
    assert tag_name(SuiteRow(train_env, (("size", "8"),)), train_env) == "size=8"
    two = SuiteRow(train_env, (("size", "8"), ("noise", "0.05")))
    assert tag_name(two, train_env) == "size=8,noise=0.05"
    other = SuiteRow("MiniGrid-DoorKey-8x8-v0", (("size", "6"),))
    assert tag_name(other, train_env) == "MiniGrid-DoorKey-8x8-v0:size=6"
    # A slash would open a TensorBoard group of its own; spaces are not for tags.
    atari = SuiteRow("ALE/Pong-v5", (("mode", "1"), ("difficulty", "0")))
    assert tag_name(atari, "ALE/Breakout-v5") == "ALE_Pong-v5:mode=1,difficulty=0"


def test_the_summary_line_shows_success_and_the_cut_share_where_there_are_any():
    doorkey = "MiniGrid-DoorKey-5x5-v0"  # success: a positive return
    target = EvalTarget(SuiteRow(doorkey), "")
    shifted = EvalTarget(SuiteRow(doorkey, (("size", "8"),)), "size=8")
    cue = EvalTarget(SuiteRow("rims/CueMemory-v0"), "rims/CueMemory-v0")  # no success defined
    results = [
        RowResult(target, EvalResult.of(doorkey, [0.9, 0.8], [10, 20], [False, False])),
        # One success, and the failure cut by the step limit.
        RowResult(shifted, EvalResult.of(doorkey, [0.5, 0.0], [40, 250], [False, True])),
        # Two right choices, one wrong, and an episode cut before any.
        RowResult(cue, EvalResult.of(cue.row.env, [1, -1, 1, 0], [3] * 4, [False] * 3 + [True])),
    ]
    line = summary_line(1024, results, 2.04)
    assert line == (
        "eval at step 1,024 (2 episodes a row, 2.0 s): return 0.850 (100%) | "
        "size=8 0.250 (50%, 50% cut) | rims/CueMemory-v0 0.250 (25% cut)"
    )
    # Where truncation was not recorded, nothing is said of it.
    unknown = RowResult(cue, EvalResult.of("rims/CueMemory-v0", [1.0], [3]))
    assert summary_line(0, [unknown], 0.0).endswith(": rims/CueMemory-v0 1.000")


def test_evaluate_leaves_the_policy_mode_and_the_rng_as_they_were():
    env = make_env("rims/CueMemory-v0")
    spec = PolicySpec(core="rims", hidden_size=4, num_units=3, k=2, feature_size=8)
    policy = ActorCritic(env.observation_space, int(env.action_space.n), spec)
    env.close()
    policy.train()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    evaluate(policy, "rims/CueMemory-v0", episodes=2, num_envs=2)
    assert policy.training
    assert torch.equal(torch.rand(3), expected)
    policy.eval()
    evaluate(policy, "rims/CueMemory-v0", episodes=1, num_envs=1)
    assert not policy.training
