"""The README's command lines stay true: every ``rims ...`` and ``python train.py ...`` line in
its ``bash`` blocks parses with today's flags, and every ``rims train`` line (but ``--help`` and
``--resume``, which read a run) makes a valid config for a known env id and names only known
shift keys and suites, so that a renamed flag or a tightened check cannot leave the README
showing a command that fails; and its Python example runs as it stands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from agents.config import TrainConfig, resolve_config
from agents.flags import given_flags
from envs.factory import check_env_id
from envs.shifts import SHIFTS
from tests.test_cli import TINY
from train import COMMANDS, build_parser, builtin_suite_names, main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[str]:
    """The ``rims`` and ``python train.py`` lines of the README's ``bash`` blocks, continuation
    lines joined and comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    commands = [shlex.split(line, comments=True) for line in lines]
    return [shlex.join(c) for c in commands if c[:1] == ["rims"] or c[:2] == ["python", "train.py"]]


def argv_of(command: str) -> list[str]:
    """The argv ``train.main`` gets: ``rims`` dropped; ``python train.py`` as ``script_main``
    reads it (``train`` unless a subcommand is named)."""
    words = shlex.split(command)
    if words[0] == "rims":
        return words[1:]
    rest = words[2:]
    return rest if rest[:1] and rest[0] in COMMANDS else ["train", *rest]


COMMAND_LINES = readme_commands()


def test_the_readme_shows_commands_of_every_subcommand():
    named = {argv_of(c)[0] for c in COMMAND_LINES}
    assert {"train", "eval", "record", "plot", "compare", "mechanisms"} <= named
    assert len(COMMAND_LINES) >= 20  # the extraction found the blocks


@pytest.mark.parametrize("command", COMMAND_LINES)
def test_a_readme_command_parses_and_a_training_config_is_valid(command):
    argv = argv_of(command)
    if {"--help", "-h", "--version"} & set(argv):  # print and exit 0
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 0
        return
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the README's {command!r} does not parse")
    for spec in getattr(args, "shift", None) or []:
        assert spec.split("=")[0] in SHIFTS, f"{command!r}: unknown shift key in {spec!r}"
    suite = getattr(args, "suite", None) or getattr(args, "eval_suite", None)
    if suite is not None and not suite.endswith(".json"):
        assert suite in [*builtin_suite_names(), "atari-modes"], f"{command!r}: suite {suite!r}"
    if args.command == "train":
        given = given_flags(args, TrainConfig)
        if not given.get("resume"):
            config = resolve_config(given)  # a ConfigError fails the test
            check_env_id(config.env)


def python_block(first_line: str) -> str:
    """The README's ``python`` block that begins with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


def test_the_readme_python_example_runs_on_a_trained_run(tmp_path, monkeypatch, capsys):
    run = tmp_path / "runs" / "my_run"
    assert main(["train", "--total-steps", "32", "--run-dir", str(run), *TINY]) == 0
    monkeypatch.chdir(tmp_path)  # the block names the run relative to here
    capsys.readouterr()
    namespace: dict = {}
    exec(compile(python_block("# A trained policy in your own loop"), "README", "exec"), namespace)
    # It stepped a RIMs policy and evaluated it as rims eval would.
    assert namespace["active"].shape == (4, 3) and namespace["active"].dtype == torch.bool
    result = namespace["result"]
    assert result.episodes == 16 and len(result.truncated) == 16
    printed = capsys.readouterr().out.split()
    assert [float(x) for x in printed] == [
        result.mean_return, result.success_rate, result.truncated_rate
    ]  # fmt: skip
