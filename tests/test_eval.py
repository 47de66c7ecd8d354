"""Evaluation: quotas, determinism, and ``rims eval`` tables and files for several runs."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from agents.evaluate import evaluate
from agents.report import FIELDS, EvalRow, format_table
from envs.factory import make_env
from envs.memory import ENV_ID
from policies.actor_critic import ActorCritic
from policies.spec import PolicySpec
from tests.test_cli import TINY, exit_code
from train import main

DOORKEY = "MiniGrid-DoorKey-5x5-v0"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for core in ("rims", "lstm"):
        run = root / f"tiny_{core}"
        assert (
            main(["train", "--core", core, "--total-steps", "32", "--run-dir", str(run), *TINY])
            == 0
        )
        runs.append(run)
    return runs


def test_evaluate_runs_a_quota_per_env_and_is_deterministic_for_a_seed():
    # An untrained policy on the cue task: each return is a coin flip, so seeds show.
    env = make_env(ENV_ID)
    policy = ActorCritic(env.observation_space, 2, PolicySpec(hidden_size=4, num_units=3, k=2))
    a = evaluate(policy, ENV_ID, episodes=23, seed=5, num_envs=3)
    b = evaluate(policy, ENV_ID, episodes=23, seed=5, num_envs=3)
    c = evaluate(policy, ENV_ID, episodes=23, seed=6, num_envs=3)
    assert a.episodes == 23 and a.returns == b.returns and a.lengths == b.lengths
    assert a.returns != c.returns
    assert a.successes is None  # the cue task defines no success
    # The global torch RNG is left as it was.
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    evaluate(policy, ENV_ID, episodes=2, seed=1, num_envs=2)
    assert torch.equal(torch.rand(1), expected)


def test_evaluate_tells_episodes_cut_by_the_step_limit_from_those_the_task_ended():
    # An untrained policy: on DoorKey an episode ends only at the goal (a success) or at the
    # step limit; on the cue task every episode ends by the task's rules.
    limit = make_env(DOORKEY).unwrapped.max_steps
    door = evaluate(policy_for(DOORKEY), DOORKEY, episodes=6, seed=0, num_envs=6)
    assert door.truncated is not None and door.successes is not None
    assert door.truncated == [not s for s in door.successes]
    assert all((n == limit) == cut for n, cut in zip(door.lengths, door.truncated))
    assert door.truncated_rate == pytest.approx(1 - door.success_rate)
    assert any(door.truncated)  # an untrained policy rarely finds the key, door and goal
    cue = evaluate(policy_for(ENV_ID), ENV_ID, episodes=4, seed=0, num_envs=2)
    assert cue.truncated == [False] * 4 and cue.truncated_rate == 0.0


def policy_for(env_id: str) -> ActorCritic:
    env = make_env(env_id)
    return ActorCritic(env.observation_space, int(env.action_space.n), PolicySpec(hidden_size=4))


def test_the_table_shows_truncated_episodes_only_where_there_are_some():
    row = dict(run="r", checkpoint="c", core="rims", env=DOORKEY, episodes=4, mean_return=0.5,
               ci95=0.1, success_rate=0.5, mean_length=9.0)  # fmt: skip
    table = format_table([EvalRow(**row, shift="", truncated_rate=0.0),
                          EvalRow(**row, shift="size=6", truncated_rate=0.25)])  # fmt: skip
    lines = table.splitlines()
    assert lines[2].endswith("0.500 ± 0.100  50%")  # the unshifted row: none cut
    assert lines[3].endswith("0.500 ± 0.100  50% (25% cut)")
    assert lines[-1].endswith("cut: episodes truncated by the env's step limit")
    plain = format_table([EvalRow(**row, shift="", truncated_rate=None)])
    assert "cut" not in plain


def _batches_acted(policy: ActorCritic, monkeypatch) -> list[int]:
    """The batch size of every ``policy.act`` call from now on."""
    batches: list[int] = []
    act = policy.act

    def counting_act(obs, state, starts, deterministic=False):
        batches.append(int(starts.shape[0]))
        return act(obs, state, starts, deterministic=deterministic)

    monkeypatch.setattr(policy, "act", counting_act)
    return batches


def test_keep_batch_acts_at_the_given_batch_and_counts_the_same_episodes(monkeypatch):
    env = make_env(ENV_ID)
    policy = ActorCritic(env.observation_space, 2, PolicySpec(hidden_size=4, num_units=3, k=2))
    batches = _batches_acted(policy, monkeypatch)
    small = evaluate(policy, ENV_ID, episodes=3, seed=5, num_envs=5, deterministic=True)
    assert set(batches) == {3}
    batches.clear()
    kept = evaluate(policy, ENV_ID, episodes=3, seed=5, num_envs=5, deterministic=True,
                    keep_batch=True)  # fmt: skip
    assert set(batches) == {5}
    # The same three episodes (envs 0-2 draw the same levels; greedy actions do not depend on
    # the batch): the extra envs play but are not counted.
    assert kept.episodes == 3 and kept.returns == small.returns and kept.lengths == small.lengths
    # A mixture's members, one episode each, keep it too.
    grid = make_env(DOORKEY)
    policy = ActorCritic(grid.observation_space, 7, PolicySpec(hidden_size=4, num_units=3, k=2))
    batches = _batches_acted(policy, monkeypatch)
    mixed = evaluate(policy, DOORKEY, episodes=2, num_envs=4, shifts=[("size", "5,6")],
                     keep_batch=True)  # fmt: skip
    assert mixed.episodes == 2 and set(batches) == {4}


def test_evaluation_during_training_keeps_the_batch_only_for_compiled_or_captured_steps():
    env = make_env(ENV_ID)
    policy = ActorCritic(env.observation_space, 2, PolicySpec(hidden_size=4, num_units=3, k=2))
    policy.core.cuda_graphs = True  # RIMs' default; on the CPU nothing is captured
    assert not policy.builds_per_batch
    policy.compile_act = True
    assert policy.builds_per_batch


def test_eval_suite_table_json_csv_plot_for_two_runs(two_runs, tmp_path, capsys):
    out = tmp_path
    # Like the built-in doorkey suite, with grids small enough for a quick test.
    rows = [{"env": DOORKEY}] + [{"env": DOORKEY, "shifts": [f"size={n}"]} for n in (6, 7, 8)]
    (out / "suite.json").write_text(json.dumps({"small": {"rows": rows}}))
    files = [
        "--json",
        str(out / "r.json"),
        "--csv",
        str(out / "r.csv"),
        "--plot",
        str(out / "r.png"),
    ]
    argv = ["eval", *map(str, two_runs), "--suite", str(out / "suite.json"), "--episodes", "2",
            "--seed", "1"]  # fmt: skip
    assert main([*argv, *files]) == 0
    table = capsys.readouterr().out
    for text in ("tiny_rims", "tiny_lstm", "size=6", "size=8", "95% CI"):
        assert text in table
    rows = json.loads((out / "r.json").read_text())
    assert len(rows) == 8 and all(tuple(r) == FIELDS for r in rows)
    assert {r["run"] for r in rows} == {"tiny_rims", "tiny_lstm"}
    assert {r["core"] for r in rows} == {"rims", "lstm"}
    shifts = [r["shift"] for r in rows if r["run"] == "tiny_rims"]
    assert shifts == ["", "size=6", "size=7", "size=8"]
    assert all(r["episodes"] == 2 and 0.0 <= r["success_rate"] <= 1.0 for r in rows)
    with (out / "r.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 8
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Same seed, same numbers.
    assert main([*argv, "--json", str(out / "again.json")]) == 0
    assert json.loads((out / "again.json").read_text()) == rows


def test_runs_with_the_same_folder_name_get_columns_of_their_own(tmp_path, capsys):
    # Two seeds' sweeps both hold "rims_s1": each must keep its own column (they used to merge).
    for sweep, core in (("a", "rims"), ("b", "lstm")):
        run = tmp_path / sweep / "rims_s1"
        assert main(["train", "--core", core, "--total-steps", "32", "--run-dir", str(run),
                     *TINY]) == 0  # fmt: skip
    a, b = tmp_path / "a" / "rims_s1", tmp_path / "b" / "rims_s1"
    out = tmp_path / "r.json"
    assert main(["eval", str(a), str(b), str(a), "--episodes", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["run"], r["core"]) for r in rows] == [
        ("a/rims_s1", "rims"),
        ("b/rims_s1", "lstm"),
        ("a/rims_s1 (2)", "rims"),
    ]
    assert "a/rims_s1" in capsys.readouterr().out


def test_one_episode_has_no_confidence_interval(two_runs, tmp_path, capsys):
    # One episode says nothing about the spread: "n/a" and null, never a confident ± 0.000.
    files = ["--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"), "--plot",
             str(tmp_path / "r.png")]  # fmt: skip
    assert main(["eval", str(two_runs[0]), "--episodes", "1", *files]) == 0
    row = capsys.readouterr().out.splitlines()[-2]  # the table's one row, above its legend
    assert "± n/a" in row and "± 0.000" not in row
    assert [r["ci95"] for r in json.loads((tmp_path / "r.json").read_text())] == [None]
    with (tmp_path / "r.csv").open() as f:
        assert [r["ci95"] for r in csv.DictReader(f)] == [""]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", str(two_runs[0]), "--episodes", "2"]) == 0
    assert "n/a" not in capsys.readouterr().out


def test_eval_with_shift_on_the_training_env(two_runs, capsys):
    assert main(["eval", str(two_runs[1]), "--shift", "size=6", "--shift", "noise=0.1",
                 "--episodes", "2"]) == 0  # fmt: skip
    assert "size=6 noise=0.1" in capsys.readouterr().out


def test_eval_takes_its_torch_threads(two_runs, monkeypatch, capsys):
    """Several evaluations beside other jobs each take one thread (torch's threads busy-wait)."""
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["eval", str(two_runs[0]), "--episodes", "1", "--torch-threads", "1"]) == 0
    assert calls == [1]
    assert main(["eval", str(two_runs[0]), "--episodes", "1"]) == 0  # 0: torch's default
    assert calls == [1]
    assert exit_code(["eval", str(two_runs[0]), "--torch-threads", "-1"]) == 2
    assert "--torch-threads" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--shift", "view=9"],
            "takes image of shape (7, 7, 3), MiniGrid-DoorKey-5x5-v0 with view=9 gives (9, 9, 3)",
        ),
        (["--shift", "bogus=1"], "unknown shift 'bogus'"),
        (["--suite", "doorkey", "--env", DOORKEY], "--suite takes its envs"),
        (["--suite", "nope"], "unknown suite 'nope'"),
        (["--env", "MiniGrid-Nope-v0"], "unknown env id"),
        (["--plot", "/tmp/x.jpg"], "extension must be one of .png"),
        (["--json", "/no/such/dir/r.json"], "folder /no/such/dir does not exist"),
        (["--env", "CartPole-v1"], "takes observations"),
    ],
)
def test_eval_bad_input_is_one_line(two_runs, extra, message, capsys):
    assert exit_code(["eval", str(two_runs[0]), "--episodes", "1", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_an_output_under_a_file_or_onto_a_folder_is_refused_before_evaluating(
    two_runs, tmp_path, capsys
):
    notes, folder = tmp_path / "notes", tmp_path / "rows.json"
    notes.write_text("a file")
    folder.mkdir()
    expected = {
        notes / "r.json": f"{notes / 'r.json'}: folder {notes} is not a folder",
        folder: f"{folder} is a folder",
    }
    for out, message in expected.items():
        assert exit_code(["eval", str(two_runs[0]), "--episodes", "1", "--json", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"rims: error: {message}"


def test_missing_and_corrupt_checkpoints_are_one_line(tmp_path, capsys):
    assert exit_code(["eval", str(tmp_path / "nothing")]) == 2
    assert "no run directory or checkpoint file" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert exit_code(["eval", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a readable rims-rl checkpoint" in err and len(err.splitlines()) == 1
    assert exit_code(["eval", str(tmp_path)]) == 2
    assert "has no latest checkpoint" in capsys.readouterr().err
