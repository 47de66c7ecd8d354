"""The IQM and mean over a suite's rows (``agents.aggregate``), and where they are printed."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from agents import compare
from agents.aggregate import aggregate, interquartile_mean, not_on_one_scale, summary
from tests.test_cli import TINY
from tests.test_compare import ROWS, pooled, write
from train import main


def test_the_interquartile_mean_cuts_a_quarter_from_each_end():
    assert interquartile_mean(np.array([100.0, 1, 2, 3, 4, 5, 6, 7])) == 4.5  # mean of 3..6
    assert interquartile_mean(np.array([9.0, 1, 2, 3, 4])) == 3.0  # cuts one each end: 2, 3, 4
    assert interquartile_mean(np.array([1.0, 2, 6])) == 3.0  # int(0.75) = 0: the plain mean
    rows = interquartile_mean(np.array([[4.0, 3, 2, 1], [0, 0, 8, 8]]))  # along the last axis
    np.testing.assert_array_equal(rows, [2.5, 4.0])


def test_each_config_over_the_rows_every_config_shares():
    found = {a.config: a for a in aggregate(ROWS[:4])}  # rims and lstm: rows '' and size=8
    rims, lstm = found["rims"], found["lstm"]
    assert list(found) == ["rims", "lstm"] and (rims.rows, rims.scores) == (2, 4)
    assert rims.iqm == pytest.approx(0.7)  # 0.5 0.6 0.8 0.9 -> 0.6, 0.8
    assert rims.mean == pytest.approx(0.7)
    assert lstm.iqm == pytest.approx(0.45)  # 0.1 0.2 0.7 0.95 -> 0.2, 0.7
    assert lstm.mean == pytest.approx(0.4875)
    assert rims.iqm_low <= rims.iqm <= rims.iqm_high and 0.5 <= rims.iqm_low
    assert rims.mean_high <= 0.9
    # ff was evaluated on one row: the others are aggregated over that row alone, which is
    # not two rows, so there is nothing to report.
    assert aggregate(ROWS) == []


def test_the_bootstrap_resamples_seeds_within_each_row():
    # Each row's seeds agree: no resample within rows can change the scores (across rows, it
    # could draw 0.2 four times).
    rows = [pooled("rims", "", (0.2, 0.2)), pooled("rims", "size=8", (0.9, 0.9))]
    (only,) = aggregate(rows)
    assert (only.mean_low, only.mean_high) == pytest.approx((0.55, 0.55))
    assert (only.iqm_low, only.iqm_high) == pytest.approx((0.55, 0.55))
    one_seed = [pooled("rims", "", (0.2,)), pooled("rims", "size=8", (0.9, 0.8))]
    assert aggregate(one_seed)[0].iqm_low is None  # a row with one seed: no interval


def test_only_returns_on_one_scale_are_pooled():
    minigrid = [pooled("rims", "", (0.5, 0.6), env="MiniGrid-DoorKey-5x5-v0"),
                pooled("rims", "", (0.5, 0.6), env="MiniGrid-Empty-8x8-v0")]  # fmt: skip
    assert not_on_one_scale(minigrid) is None
    modes = [pooled("rims", "", (5.0, 6.0), env="ALE/Pong-v5"),
             pooled("rims", "mode=1", (1.0, 2.0), env="ALE/Pong-v5")]  # fmt: skip
    assert not_on_one_scale(modes) is None and len(aggregate(modes)) == 1
    games = [modes[0], replace(modes[1], env="ALE/Breakout-v5")]
    assert "different scales" in not_on_one_scale(games)
    assert aggregate(games) == [] and summary(games).startswith("no IQM over the rows")
    assert summary(ROWS) is None  # fewer than two shared rows: nothing printed


def test_rims_compare_prints_the_aggregate_before_the_comparison(tmp_path, capsys):
    assert main(["compare", write(tmp_path / "a.json", ROWS[:4])]) == 0
    out = capsys.readouterr().out
    assert out.index("IQM") < out.index("A > B")
    line = next(line for line in out.splitlines() if line.startswith("rims "))
    assert "0.700 [" in line  # the IQM of rims' four scores


def test_pooled_eval_of_a_suite_prints_the_aggregate(tmp_path, capsys):
    runs = []
    for seed in (1, 2):
        run = tmp_path / f"rims_s{seed}"
        argv = ["train", "--total-steps", "32", "--seed", str(seed), "--run-dir", str(run), *TINY]
        assert main(argv) == 0
        runs.append(str(run))
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"two": {"description": "the training env and a larger one", "rows": [
        {"env": "$RUN"}, {"env": "$RUN", "shifts": ["size=6"]}]}}))  # fmt: skip
    capsys.readouterr()
    argv = ["eval", *runs, "--suite", str(suite), "--episodes", "2", "--pool-seeds"]
    assert main([*argv, "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "over the 2 rows every config was evaluated on" in out
    rows = compare.read_pooled(tmp_path / "p.json")
    (expected,) = aggregate(rows)
    line = next(line for line in out.splitlines() if line.startswith("rims "))
    assert f"{expected.iqm:.3f} [{expected.iqm_low:.3f}, {expected.iqm_high:.3f}]" in line
