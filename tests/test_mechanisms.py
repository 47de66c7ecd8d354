"""``rims mechanisms``: the information maths, and what a run's episodes are reported as."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from agents.checkpoint import load_policy
from agents.config import ConfigError
from agents.evaluate import evaluate, outcome_of
from agents.mechanisms import (
    PHASES,
    MechanismRecorder,
    feature_stats,
    inspect_mechanisms,
    mutual_information,
    selection_summary,
    situation_of,
    steps_where,
)
from agents.selection import selection_line
from envs.factory import make_env
from envs.memory import ENV_ID as CUE_TASK
from envs.suites import SuiteRow
from tests.test_cli import TINY, exit_code
from train import main

DOORKEY = "MiniGrid-DoorKey-5x5-v0"


def entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits, elementwise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(terms)


def test_mutual_information_is_what_the_feature_tells_of_the_activity():
    codes = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    masks = np.stack(
        [
            codes == 0,  # unit 0: active exactly on value 0 (a quarter of the steps)
            np.array([1, 0, 1, 0, 1, 0, 1, 0], bool),  # unit 1: half of every value's steps
            np.ones(8, bool),  # unit 2: always active, so nothing to tell
        ],
        axis=1,
    )
    info = mutual_information(masks, codes, 3)
    # Unit 0's activity is a function of the feature: all its entropy, H(1/4).
    assert info[0] == pytest.approx(entropy(np.array(0.25)))
    assert info[1] == pytest.approx(0.0, abs=1e-12) and info[2] == 0.0
    # Random data: I = H(active) - H(active | feature), computed the long way.
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=500)
    masks = rng.random((500, 3)) < np.array([0.2, 0.5, 0.8])[codes % 3][:, None]
    conditional = sum((codes == v).mean() * entropy(masks[codes == v].mean(0)) for v in range(4))
    expected = entropy(masks.mean(0)) - conditional
    assert mutual_information(masks, codes, 4) == pytest.approx(expected)


def test_feature_stats_give_rates_per_value_and_a_chance_level():
    labels = ["key"] * 30 + ["nothing"] * 70
    masks = np.zeros((100, 2), bool)
    masks[:30, 0] = True  # unit 0 is active while carrying the key
    masks[::2, 1] = True  # unit 1 every other step
    stats = feature_stats("carrying", masks, labels)
    assert stats.values == ("nothing", "key") and stats.steps == (70, 30)  # most steps first
    assert stats.rates == ((0.0, 0.5), (1.0, 0.5))
    assert stats.information[0] == pytest.approx(entropy(np.array(0.3)))
    assert stats.chance[0] < 0.01 < stats.information[0]
    assert stats.information[1] == pytest.approx(0.0, abs=1e-12)
    # Phases keep their order whatever their counts.
    phases = feature_stats("phase", masks, [PHASES[3]] * 60 + [PHASES[0]] * 40)
    assert phases.values == (PHASES[0], PHASES[3])


def test_the_summary_names_the_units_selection_switches():
    assert selection_summary([1.0, 0.0, 0.5, 0.97, 0.04]) == (
        "units switched by selection: 2; always on: 0, 3; always off: 1, 4 "
        "(on or off in over 95% of the steps)"
    )
    assert selection_summary([0.5, 0.5]).startswith(
        "units switched by selection: 0, 1; always on: none"
    )


def test_where_keeps_the_steps_in_a_situation_and_names_what_there_is():
    situations = [
        {"cue": "key", "phase": "1st quarter"},
        {"cue": "ball", "phase": "4th quarter"},
        {"cue": "key", "phase": "4th quarter"},
    ]
    assert steps_where(situations, [("phase", "4th quarter")]) == [1, 2]
    assert steps_where(situations, [("phase", "4th quarter"), ("cue", "key")]) == [2]
    assert steps_where(situations, []) == [0, 1, 2]
    # A feature named twice admits either value; each feature must still match.
    assert steps_where(situations, [("cue", "key"), ("cue", "ball")]) == [0, 1, 2]
    either = [("cue", "key"), ("phase", "4th quarter"), ("cue", "ball")]
    assert steps_where(situations, either) == [1, 2]
    with pytest.raises(ConfigError, match=r"--where cue=box or bag: no step left"):
        steps_where(situations, [("cue", "box"), ("cue", "bag")])
    with pytest.raises(ConfigError, match=r"--where colour: no such feature here \(features: cue"):
        steps_where(situations, [("colour", "red")])
    with pytest.raises(ConfigError, match=r"no step left \(values of cue: ball, key\)"):
        steps_where(situations, [("cue", "box")])


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mech")
    runs = {}
    for core in ("rims", "lstm"):
        runs[core] = root / core
        argv = ["train", "--core", core, "--total-steps", "32", "--run-dir", str(runs[core]),
                *TINY]  # fmt: skip
        assert main(argv) == 0
    runs["cue"] = root / "cue"
    argv = ["train", "--env", CUE_TASK, "--total-steps", "32", "--run-dir", str(runs["cue"]),
            *TINY]  # fmt: skip
    assert main(argv) == 0
    return runs


def test_every_counted_step_is_reported_with_its_situation(tiny_runs):
    loaded = load_policy(tiny_runs["rims"])
    row = SuiteRow(DOORKEY, (("size", "5,6"),))
    report = inspect_mechanisms(loaded, row, episodes=5, seed=2, num_envs=2)
    played = evaluate(loaded.policy, DOORKEY, 5, 2, 2, shifts=row.shifts)
    # The steps of exactly the evaluation's episodes: none of those past an env's quota.
    assert report.steps == sum(played.lengths) and report.episodes == 5
    # k of the units are active on every step, so the rates sum to k; so do each value's.
    assert report.units == 3 and report.k == 2
    assert sum(report.rates) == pytest.approx(2)
    features = {f.name: f for f in report.features}
    assert set(features) == {
        "action", "shift", "carrying", "facing", "direction", "phase", "outcome"
    }  # fmt: skip
    for f in features.values():
        assert sum(f.steps) == report.steps
        assert all(sum(rates) == pytest.approx(2) for rates in f.rates)
    # The mixture's members are stratified: 3 episodes on 5x5, 2 on 6x6.
    shift = dict(zip(features["shift"].values, features["shift"].steps))
    assert shift == {"size=5": sum(played.lengths[:3]), "size=6": sum(played.lengths[3:])}
    # Every step carries how its episode ended: DoorKey ends at the goal or is cut at its limit.
    outcome = dict(zip(features["outcome"].values, features["outcome"].steps))
    expected: Counter[str] = Counter()
    for length, success, cut in zip(played.lengths, played.successes, played.truncated):
        assert success != cut
        expected["success" if success else "cut"] += length
    assert outcome == dict(expected)
    # An untrained policy rarely picks up the key within its steps, but it starts without one.
    assert "nothing" in features["carrying"].values


def test_rims_mechanisms_command_writes_json_and_refuses_other_cores(tiny_runs, tmp_path, capsys):
    out = tmp_path / "m.json"
    run = str(tiny_runs["rims"])
    assert main(["mechanisms", run, "--episodes", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 of 3 mechanisms active a step" in text and "information (bits)" in text
    [saved] = json.loads(out.read_text())
    assert saved["episodes"] == 3 and len(saved["rates"]) == 3
    all_steps = saved["steps"]
    names = [f["name"] for f in saved["features"]]
    assert names == ["action", "carrying", "facing", "direction", "phase", "outcome"]
    # A suite: one line of rates a row, and every row's full report in the JSON.
    suite = tmp_path / "suite.json"
    rows = [{"env": "$RUN"}, {"env": "$RUN", "shifts": ["size=6"]}]
    suite.write_text(json.dumps({"two": {"rows": rows}}))
    argv = ["mechanisms", run, "--suite", str(suite), "--episodes", "2", "--json", str(out)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0] == f"{tiny_runs['rims'].name}: 2 episodes a row, 2 of 3 mechanisms active a step"
    )
    assert lines[1].startswith("env") and [line.split()[1] for line in lines[3:5]] == [
        "-",
        "size=6",
    ]
    saved = json.loads(out.read_text())
    assert [r["shift"] for r in saved] == ["", "size=6"] and all(r["episodes"] == 2 for r in saved)
    # A suite row where --where matches no step is left out with a line; all of them is an error.
    mixed = tmp_path / "mixed.json"
    rows = [{"env": "$RUN"}, {"env": "MiniGrid-MemoryS7-v0"}]  # DoorKey has no cue
    mixed.write_text(json.dumps({"mixed": {"rows": rows}}))
    argv = ["mechanisms", run, "--suite", str(mixed), "--episodes", "4", "--json", str(out)]
    assert main([*argv, "--where", "cue=key"]) == 0
    printed = capsys.readouterr().out
    assert "skipped MiniGrid-DoorKey-5x5-v0: --where cue: no such feature here" in printed
    assert [r["env"] for r in json.loads(out.read_text())] == ["MiniGrid-MemoryS7-v0"]
    assert exit_code([*argv, "--where", "carrying=box"]) == 2
    assert capsys.readouterr().err.strip() == "rims: error: --where matched no step of any row"
    assert exit_code(["mechanisms", run, "--suite", str(suite), "--shift", "size=6"]) == 2
    assert "--suite takes its envs and shifts from the suite" in capsys.readouterr().err
    # --where reports the steps of one situation; the condition's feature is left out.
    assert main(["mechanisms", run, "--episodes", "3", "--where", "carrying=nothing",
                 "--json", str(out)]) == 0  # fmt: skip
    assert "steps where carrying=nothing" in capsys.readouterr().out
    [where] = json.loads(out.read_text())
    assert where["where"] == ["carrying=nothing"] and where["steps"] > 0
    assert "carrying" not in [f["name"] for f in where["features"]]
    # Two values of one feature: the steps of either, and the feature stays in the report.
    assert main(["mechanisms", run, "--episodes", "3", "--where", "outcome=cut", "--where",
                 "outcome=success", "--json", str(out)]) == 0  # fmt: skip
    assert "steps where outcome=cut or success" in capsys.readouterr().out
    [either] = json.loads(out.read_text())
    assert either["where"] == ["outcome=cut or success"]
    assert either["steps"] == all_steps  # DoorKey's episodes end in one of the two
    assert "outcome" in [f["name"] for f in either["features"]]
    for bad in ("carrying", "carrying=a ball"):
        assert exit_code(["mechanisms", run, "--episodes", "1", "--where", bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert exit_code(["mechanisms", str(tiny_runs["lstm"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "has a lstm core: only RIMs have mechanisms" in err and len(err.splitlines()) == 1
    assert exit_code(["mechanisms", run, "--env", "MiniGrid-Nope-v0"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    for command in ("mechanisms", "eval"):  # a device name torch does not know was a traceback
        assert exit_code([command, run, "--device", "gpu"]) == 2
        assert "--device must be auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err


def test_memory_tasks_report_the_cue(tiny_runs):
    # MemoryEnv: the cue is the start room's object, the one whose twin ends the hallway well.
    env = make_env("MiniGrid-MemoryS7-v0")
    cues = set()
    for seed in range(6):
        env.reset(seed=seed)
        grid_env = env.unwrapped
        x, y = grid_env.success_pos
        beside = [grid_env.grid.get(x, y - 1), grid_env.grid.get(x, y + 1)]
        target = [c.type for c in beside if c is not None and c.type in ("key", "ball")]
        cue = situation_of(env)["cue"]
        assert [cue] == target
        cues.add(cue)
    env.close()
    assert cues == {"key", "ball"}
    # Whether the agent sees the cue now, and has seen it so far: once seen, it stays seen.
    recorder = MechanismRecorder(["a"] * 7)
    policy = load_policy(tiny_runs["rims"]).policy
    played = evaluate(policy, "MiniGrid-MemoryS7-v0", 6, seed=0, num_envs=2, observer=recorder)
    start = 0
    for j, length in enumerate(played.lengths):  # the episodes in the order they count
        episode = recorder.situations[start : start + length]
        start += length
        seen = "no"
        for situation in episode:
            seen = "yes" if situation["cue in view"] == "yes" else seen
            assert situation["cue seen so far"] == seen
        # how it ended, on each of its steps: a wrong choice ends MemoryS7 as a failure
        ended = outcome_of("MiniGrid-MemoryS7-v0", played.returns[j], played.truncated[j])
        assert {situation["outcome"] for situation in episode} == {ended}
    assert start == len(recorder.situations)
    views = {s["cue in view"] for s in recorder.situations}
    assert views == {"yes", "no"}  # an untrained policy turns round now and then
    # An env may name its own features: the cue task's cue, on every step of its episode.
    report = inspect_mechanisms(load_policy(tiny_runs["cue"]), SuiteRow(CUE_TASK, ()), 8, seed=1)
    features = {f.name: f for f in report.features}
    assert set(features) == {"action", "phase", "cue", "outcome"}
    assert features["outcome"].values == ("ended",)  # no success defined, never cut
    assert set(features["cue"].values) == {"0", "1"}
    assert all(steps % 6 == 0 for steps in features["cue"].steps)  # whole 6-step episodes


def test_the_training_summary_says_how_many_units_selection_switched():
    assert selection_line(2, 6, k=4).startswith("RIMs selection switched 2 of 6 units")
    fixed = selection_line(0, 6, k=4)
    assert "none of 6" in fixed and "the same 4" in fixed
    assert "--selection-balance" in fixed and "--centre-features" in fixed
    assert selection_line(0, 6, k=6) is None  # every RIM always active: nothing is selected
