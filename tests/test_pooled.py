"""``rims eval --pool-seeds``: configs named and told apart, seeds pooled, the bootstrap maths."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from agents.compare import read_pooled
from agents.groups import config_key, config_names
from agents.pooled import (
    FIELDS,
    PooledRow,
    bootstrap_ci,
    format_table,
    t_interval,
    t_quantile,
    write_json,
)
from envs.memory import ENV_ID
from tests.test_cli import TINY, exit_code
from train import main


def test_bootstrap_interval_of_two_values_spans_them():
    # Resampled means of [0, 1] are 0, 0.5 or 1 with chances 1/4, 1/2, 1/4: the 2.5th
    # percentile is 0 and the 97.5th is 1.
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    assert bootstrap_ci([0.7]) is None  # one seed: no spread to resample


def test_bootstrap_interval_matches_the_normal_one_for_many_values():
    # For many values the bootstrap distribution of the mean is close to normal with standard
    # error s / sqrt(n), so the interval is close to mean -+ 1.96 s / sqrt(n).
    values = np.random.default_rng(3).normal(0.4, 0.2, size=400)
    low, high = bootstrap_ci(values)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(values.mean() + half, abs=0.15 * half)
    assert bootstrap_ci(values) == (low, high)  # a fixed resampling seed: reproducible


@pytest.mark.parametrize(
    "level, df, table",  # the tables' two-sided quantiles
    [(0.95, 1, 12.706), (0.95, 2, 4.303), (0.95, 4, 2.776), (0.95, 9, 2.262), (0.95, 30, 2.042),
     (0.99, 3, 5.841), (0.90, 6, 1.943)],
)  # fmt: skip
def test_t_quantiles_are_the_tables(level, df, table):
    assert t_quantile(level, df) == pytest.approx(table, abs=5e-4)


def test_t_interval_by_hand_and_wider_than_the_bootstrap_for_few_seeds():
    # mean 2, s = 1, three values: 2 -+ 4.303 / sqrt(3)
    low, high = t_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - 4.3027 / 3**0.5, 2 + 4.3027 / 3**0.5), abs=1e-4)
    b_low, b_high = bootstrap_ci([1.0, 2.0, 3.0])
    assert low < b_low and b_high < high
    assert t_interval([0.4]) is None
    # many values: close to the normal interval, as the bootstrap is
    values = np.random.default_rng(3).normal(0.4, 0.2, size=400)
    half = 1.966 * values.std(ddof=1) / np.sqrt(len(values))  # t(0.975, 399) = 1.9660
    assert t_interval(values) == pytest.approx(
        (values.mean() - half, values.mean() + half), rel=1e-4
    )


def test_configs_are_named_by_what_tells_them_apart():
    rims4 = {"core": "rims", "env": "E", "k": 4, "lr": 1.0, "seed": 1, "device": "cpu"}
    rims4_seed2 = {**rims4, "seed": 2, "device": "cuda"}  # a seed of the same config
    rims3 = {**rims4, "k": 3}
    lstm = {**rims4, "core": "lstm"}
    assert config_key(rims4) == config_key(rims4_seed2) != config_key(rims3)
    names = config_names([rims4, rims4_seed2, rims3, lstm])
    assert names == {
        config_key(rims4): "rims k=4",
        config_key(rims3): "rims k=3",
        config_key(lstm): "lstm",  # the only LSTM: its k tells it from nothing
    }
    mixed = {**rims4, "shift": ["size=5,6", "noise=0.1"]}  # as config.json holds it
    assert config_names([{**rims4, "shift": []}, mixed])[config_key(mixed)] == (
        "rims size=5,6 noise=0.1"
    )
    unshifted = {**rims4, "shift": ()}  # as TrainConfig.to_dict gives it
    assert config_key(unshifted) == config_key({**rims4, "shift": []})
    assert config_names([unshifted, mixed])[config_key(unshifted)] == "rims unshifted"
    # A schedule's other shifts name the curriculum; a run saved before them had none.
    curriculum = {**mixed, "other_shift": ["size=5"]}
    assert config_names([mixed, curriculum])[config_key(curriculum)] == "rims other size=5"
    assert config_names([mixed, curriculum])[config_key(mixed)] == "rims other unshifted"
    assert config_key(mixed) == config_key({**mixed, "other_shift": []})
    # A run saved before --shift existed has no "shift": it is an unshifted run.
    assert config_key({"core": "rims", "env": "E"}) == config_key(
        {"core": "rims", "env": "E", "shift": []}
    )
    other_env = {**lstm, "env": "F"}
    assert config_names([rims4, other_env]) == {
        config_key(rims4): "rims on E",
        config_key(other_env): "lstm on F",
    }


@pytest.fixture(scope="module")
def cue_runs(tmp_path_factory):
    """Three tiny runs on the cue task, trained for 20 updates at a large learning rate so that
    the seeds' policies (and returns) differ: RIMs seeds 1 and 2, LSTM seed 1."""
    root = tmp_path_factory.mktemp("cue")
    runs = []
    for core, seed in (("rims", 1), ("rims", 2), ("lstm", 1)):
        run = root / f"{core}_s{seed}"
        argv = ["train", "--env", ENV_ID, "--core", core, "--seed", str(seed),
                "--total-steps", "320", "--learning-rate", "0.05", "--run-dir", str(run), *TINY]  # fmt: skip
        assert main(argv) == 0
        runs.append(str(run))
    return runs


def test_pooled_eval_is_the_mean_over_seeds_of_each_runs_eval(cue_runs, tmp_path, capsys):
    common = ["eval", *cue_runs, "--episodes", "20", "--seed", "3"]
    assert main([*common, "--json", str(tmp_path / "runs.json")]) == 0
    per_run = {r["run"]: r["mean_return"] for r in json.loads((tmp_path / "runs.json").read_text())}
    capsys.readouterr()
    files = ["--json", str(tmp_path / "p.json"), "--csv", str(tmp_path / "p.csv"),
             "--plot", str(tmp_path / "p.png")]  # fmt: skip
    assert main([*common, "--pool-seeds", *files]) == 0
    table = capsys.readouterr().out
    assert "rims (2 seeds)" in table and "lstm (1 seed)" in table and "bootstrap" in table
    rows = {r["config"]: r for r in json.loads((tmp_path / "p.json").read_text())}
    assert set(rows) == {"rims", "lstm"}
    rims, lstm = rows["rims"], rows["lstm"]
    assert rims["runs"] == ["rims_s1", "rims_s2"] and rims["seeds"] == 2
    assert rims["run_returns"] == [per_run["rims_s1"], per_run["rims_s2"]]
    assert rims["mean_return"] == pytest.approx(np.mean(rims["run_returns"]))
    assert rims["min_return"] == min(rims["run_returns"])
    assert (rims["ci_low"], rims["ci_high"]) == pytest.approx(bootstrap_ci(rims["run_returns"]))
    assert rims["ci_low"] < rims["mean_return"] < rims["ci_high"]  # the seeds differ
    assert lstm["run_returns"] == [per_run["lstm_s1"]] and lstm["ci_low"] is None
    assert "[n/a]" in table  # the LSTM's single seed
    assert rims["episodes"] == 20 and rims["success_rate"] is None  # the cue task has none
    assert rims["truncated_rate"] == 0.0 and "cut" not in table  # nor a step limit it reaches
    with (tmp_path / "p.csv").open() as f:
        assert tuple(csv.DictReader(f).fieldnames) == FIELDS
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Two configs: the table of P(rims > lstm) follows, and rims compare gives it from the JSON.
    comparison = table[table.index("A > B") :]
    assert "rims > lstm" in comparison and "[n/a]" in comparison  # one LSTM seed
    assert main(["compare", str(tmp_path / "p.json")]) == 0
    assert capsys.readouterr().out == comparison


def test_pooled_eval_with_t_intervals(cue_runs, tmp_path, capsys):
    out = tmp_path / "t.json"
    args = ["eval", *cue_runs, "--episodes", "20", "--seed", "3", "--pool-seeds"]
    assert main([*args, "--interval", "t", "--json", str(out)]) == 0
    assert "Student's t interval" in capsys.readouterr().out
    rims = next(r for r in json.loads(out.read_text()) if r["config"] == "rims")
    assert rims["interval"] == "t"
    assert (rims["ci_low"], rims["ci_high"]) == pytest.approx(t_interval(rims["run_returns"]))
    assert main(["compare", str(out)]) == 0  # rims compare reads the file as any other
    capsys.readouterr()
    assert exit_code(["eval", cue_runs[0], "--interval", "t"]) == 2  # without --pool-seeds
    err = capsys.readouterr().err.strip()
    assert "--interval chooses the interval over seeds of --pool-seeds" in err
    assert len(err.splitlines()) == 1


def test_a_seed_given_twice_is_refused(cue_runs, capsys):
    assert exit_code(["eval", cue_runs[0], cue_runs[1], cue_runs[0], "--pool-seeds"]) == 2
    err = capsys.readouterr().err.strip()
    assert "one config with seed 1; give each seed once" in err and len(err.splitlines()) == 1


def test_pooled_cells_show_truncated_episodes_and_older_files_read_without_them(tmp_path):
    row = PooledRow("rims", "rims", "MiniGrid-MemoryS7-v0", "size=21", 2, 64, 0.5, 0.4, 0.6,
                    0.4, 0.6, 0.5, ("a", "b"), (0.4, 0.6), "bootstrap", 0.125)  # fmt: skip
    table = format_table([row])
    assert "0.500 [0.400, 0.600]  50% (12% cut)" in table
    assert table.endswith("cut: episodes truncated by the env's step limit")
    path = tmp_path / "p.json"
    write_json([row], path)
    assert read_pooled(path) == [row]
    # A file written before the field (or before "interval") reads as not recorded.
    [saved] = json.loads(path.read_text())
    del saved["truncated_rate"], saved["interval"]
    path.write_text(json.dumps([saved]))
    [old] = read_pooled(path)
    assert old.truncated_rate is None and old.interval == "bootstrap"
    assert "cut" not in format_table([old])
