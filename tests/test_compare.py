"""``rims compare``: the probability of improvement, its stratified bootstrap, and bad files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from agents.compare import (
    ALL_ROWS,
    FIELDS,
    bootstrap_interval,
    compare,
    probability_of_improvement,
)
from agents.pooled import PooledRow
from tests.test_cli import exit_code
from train import main


def test_probability_of_improvement_by_hand():
    # 1 beats 0 only; 2 ties 2 twice and beats 0; 3 beats all three: (1 + 2 + 3) / 9.
    a, b = [1.0, 2.0, 3.0], [2.0, 2.0, 0.0]
    assert probability_of_improvement([a], [b]) == pytest.approx(6 / 9)
    assert probability_of_improvement([b], [a]) == pytest.approx(3 / 9)  # the two sum to 1
    assert probability_of_improvement([a], [a]) == 0.5  # a config against itself
    # Over rows it is the mean of the rows': 6/9 and 1 (every seed of the second row wins).
    assert probability_of_improvement([a, [5.0, 6.0]], [b, [1.0]]) == pytest.approx(15 / 18)


def test_the_bootstrap_is_stratified_by_row():
    assert bootstrap_interval([[1.0, 2.0]], [[0.0, 0.5]]) == (1.0, 1.0)  # A always wins
    # Row 1: A always wins; row 2: A always loses. Resampling seeds within each row cannot
    # change either, so every resample gives 0.5; resampling across rows would not.
    assert bootstrap_interval([[1.0, 2.0], [0.0, 0.1]], [[0.0, 0.5], [3.0, 4.0]]) == (0.5, 0.5)
    a, b = [0.2, 0.5, 0.9, 0.4], [0.3, 0.1, 0.35, 0.6]
    low, high = bootstrap_interval([a], [b])
    assert low < probability_of_improvement([a], [b]) < high
    assert bootstrap_interval([a], [b]) == (low, high)  # a fixed resampling seed
    assert bootstrap_interval([a], [[0.3]]) is None  # one seed: no spread to resample


def pooled(config: str, shift: str, returns: tuple[float, ...], env: str = "E") -> PooledRow:
    return PooledRow(
        config, config.split()[0], env, shift, len(returns), 10, sum(returns) / len(returns),
        None, None, min(returns), max(returns), None,
        tuple(f"{config}_s{i}" for i in range(len(returns))), returns,
    )  # fmt: skip


ROWS = [
    pooled("rims", "", (0.9, 0.8)),
    pooled("rims", "size=8", (0.5, 0.6)),
    pooled("lstm", "", (0.7, 0.95)),
    pooled("lstm", "size=8", (0.1, 0.2)),
    pooled("ff", "", (0.1,)),  # no size=8 row
]


def test_every_pair_on_each_shared_row_and_on_their_mean():
    found = {(c.config, c.baseline, c.env, c.shift): c for c in compare(ROWS)}
    assert list(found) == [
        ("rims", "lstm", "E", ""),
        ("rims", "lstm", "E", "size=8"),
        ("rims", "lstm", ALL_ROWS, ""),
        ("rims", "ff", "E", ""),  # one shared row: no mean
        ("lstm", "ff", "E", ""),
    ]
    assert found[("rims", "lstm", "E", "")].probability == 0.5  # 0.9 > 0.7, 0.8 < 0.95 ...
    assert found[("rims", "lstm", "E", "size=8")].probability == 1.0
    mean = found[("rims", "lstm", ALL_ROWS, "")]
    assert (mean.probability, mean.rows) == (0.75, 2)
    assert found[("rims", "ff", "E", "")].ci_low is None  # ff has one seed


def write(path, rows) -> str:
    path.write_text(json.dumps([asdict(r) for r in rows]))
    return str(path)


def text(path, content: str) -> str:
    path.write_text(content)
    return str(path)


def binary(path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def test_rims_compare_reads_pooled_files_and_writes_json_and_csv(tmp_path, capsys):
    first = write(tmp_path / "a.json", ROWS[:2])
    second = write(tmp_path / "b.json", ROWS[2:4])
    out = ["--json", str(tmp_path / "c.json"), "--csv", str(tmp_path / "c.csv"),
           "--plot", str(tmp_path / "c.png")]  # fmt: skip
    assert main(["compare", first, second, *out]) == 0
    table = capsys.readouterr().out
    assert "rims > lstm" in table and "mean over rows" in table and "P(A > B) on E" in table
    written = json.loads((tmp_path / "c.json").read_text())
    assert [asdict(c) for c in compare(ROWS[:4])] == written
    with (tmp_path / "c.csv").open() as f:
        assert tuple(csv.DictReader(f).fieldnames) == FIELDS
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_tell_apart_files_whose_configs_share_a_name(tmp_path, capsys):
    """Two studies of one config name: refused as they are, compared once labelled; a file
    whose own name holds '=' is still read as a file."""
    first = write(tmp_path / "a.json", ROWS[:2])
    odd = write(tmp_path / "x=b.json", [replace(r, run_returns=(0.96, 0.97)) for r in ROWS[:2]])
    assert exit_code(["compare", first, odd]) == 2
    assert "label each file (LABEL=FILE)" in capsys.readouterr().err
    assert main(["compare", f"old={first}", f"new={odd}", "--json", str(tmp_path / "c.json")]) == 0
    assert "old: rims > new: rims" in capsys.readouterr().out
    written = json.loads((tmp_path / "c.json").read_text())
    assert {(c["config"], c["baseline"]) for c in written} == {("old: rims", "new: rims")}
    # Every seed of the second file scores higher: P(old > new) is 0 on both rows and over them.
    assert [(c["shift"], c["probability"]) for c in written] == [
        ("", 0.0),
        ("size=8", 0.0),
        ("", 0.0),
    ]
    assert exit_code(["compare", f"={first}", odd]) == 2
    assert "give a label before '='" in capsys.readouterr().err


@pytest.mark.parametrize(
    "files, message",
    [
        (lambda d: [write(d / "a.json", ROWS[:2])], "the files hold one config"),
        (lambda d: [write(d / "a.json", ROWS[:2]), write(d / "b.json", ROWS[1:3])],
         "config 'rims' on E size=8 is in more than one file"),
        (lambda d: [write(d / "a.json", [ROWS[0], replace(ROWS[2], env="F")])],
         "no two configs were evaluated on a common env x shift"),
        (lambda d: [str(d / "missing.json")], "cannot read it"),
        (lambda d: [text(d / "a.json", "[{")], "not JSON"),
        (lambda d: [binary(d / "a.json", b"\x89PNG\r\n")], "not JSON"),  # a plot given for it
        (lambda d: [text(d / "a.json", '[{"config": "rims"}]')],
         "not a 'rims eval --pool-seeds --json' file"),
        (lambda d: [text(d / "a.json", json.dumps([{**asdict(ROWS[0]), "run_returns": []}]))],
         "run_returns of 'rims' is not a list of numbers"),
        (lambda d: [text(d / "a.json", json.dumps([{**asdict(ROWS[0]), "config": {"a": 1}}]))],
         "not a 'rims eval --pool-seeds --json' file"),
    ],
)  # fmt: skip
def test_bad_files_are_one_line(tmp_path, capsys, files, message):
    assert exit_code(["compare", *files(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_reader_that_goes_away_ends_the_output_without_a_traceback(tmp_path):
    # 90 configs: 4,005 pairs, a table larger than a pipe's buffer, so printing it meets the
    # closed pipe.
    rows = [pooled(f"c{i}", "", (0.1 * (i % 7), 0.5)) for i in range(90)]
    path = write(tmp_path / "many.json", rows)
    process = subprocess.Popen(
        [sys.executable, "train.py", "compare", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    assert process.stdout.read(10)
    process.stdout.close()
    assert process.wait(timeout=120) == 141
    assert process.stderr.read() == b""
