"""The ``rims`` command line. ``python train.py ARGS`` is ``rims train ARGS``.

Bad input (unknown env ids, bad flag values, impossible configs, missing or corrupt checkpoints)
ends with one ``rims: error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from agents.checkpoint import CheckpointError
from agents.config import ConfigError, TrainConfig, resolve_config
from agents.flags import add_flags, given_flags
from envs.factory import EnvError

USAGE_ERRORS = (ConfigError, EnvError, CheckpointError)
RESUME_MAY_CHANGE = {"run_dir", "resume", "total_steps", "device", "progress", "torch_threads"}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="rims", description="Recurrent Independent Mechanisms for reinforcement learning."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    train = commands.add_parser(
        "train",
        help="train a recurrent PPO agent",
        description=(
            "Train a recurrent PPO agent. With no flags: RIMs on MiniGrid-DoorKey-5x5-v0. "
            "Flags you do not give come from the env family's preset."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_flags(train, TrainConfig)
    return parser


def config_for_train(given: dict) -> TrainConfig:
    """The config to train with: the given flags over the preset, or, with ``--resume``, the
    run's saved config with only the flags that may change on resume."""
    if not given.get("resume"):
        return resolve_config(given)
    from agents.trainer import saved_config

    if not given.get("run_dir"):
        raise ConfigError("--resume needs --run-dir DIR (the run to continue)")
    saved = saved_config(Path(given["run_dir"]))
    changed = sorted(
        k for k, v in given.items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v
    )
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ConfigError(f"cannot change {flags} when resuming (the run's config is fixed)")
    try:
        return TrainConfig.from_dict({**saved, **given, "overwrite": False})
    except TypeError as err:
        path = Path(given["run_dir"]) / "config.json"
        raise ConfigError(f"{path} does not fit this version of rims-rl: {err}") from None


def run_train(given: dict) -> int:
    config = config_for_train(given)
    from agents.trainer import train  # imported late: `rims --help` stays fast

    result = train(config)
    recent = result.mean_recent_return
    print(
        f"trained to step {result.global_step:,} in {result.seconds:.0f} s; "
        f"mean return of the last 100 episodes: {'n/a' if recent is None else f'{recent:.3f}'}; "
        f"run dir: {result.run_dir}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rims`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "train":
            return run_train(given_flags(args, TrainConfig))
    except USAGE_ERRORS as err:
        print(f"rims: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rims: interrupted", file=sys.stderr)
        return 130
    return 2


def script_main() -> int:
    """``python train.py ARGS`` == ``rims train ARGS`` (a subcommand may also be named)."""
    argv = sys.argv[1:]
    if not argv or argv[0] not in ("train",) and argv[0] not in ("-h", "--help"):
        argv = ["train", *argv]
    return main(argv)


if __name__ == "__main__":
    sys.exit(script_main())
