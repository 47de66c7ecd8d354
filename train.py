"""The ``rims`` command line. ``python train.py ARGS`` is ``rims train ARGS``.

Bad input (unknown env ids, bad flag values, impossible configs, missing or corrupt checkpoints)
ends with one ``rims: error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.config import (
    HELP_SECTIONS,
    MAX_SEED,
    NOT_LEARNED,
    PRESETS,
    SEED_RANGE,
    ConfigError,
    TrainConfig,
    resolve_config,
    saved_fields,
)
from agents.errors import CheckpointError
from agents.flags import add_flags, given_flags
from envs.factory import EnvError
from envs.shifts import SHIFTS, ShiftError
from envs.suites import Suite, SuiteRow

if TYPE_CHECKING:
    from agents.checkpoint import LoadedPolicy

# Nothing imported above imports torch (2 s on a 2-core CPU; tests/test_cli.py checks it):
# `rims --help` and bad flags are answered without it. Each command imports what it runs.

USAGE_ERRORS = (ConfigError, EnvError, CheckpointError, ShiftError)


def quiet_rank() -> bool:
    """A torchrun rank other than 0. What every rank finds in the command line alone, before
    the process group exists, rank 0 says once; the others exit 0 without a word (a non-zero
    code would make torchrun stop rank 0, maybe before it says it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if quiet_rank():
            self.exit(0)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version_text() -> str:
    """``rims-rl 0.1.0 (torch 2.13.0+cpu, gymnasium 1.2.0, ...)``: what a bug report needs, read
    from the installed packages' metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    others = ", ".join(f"{name} {of(name)}" for name in DEPENDENCIES)
    return f"rims-rl {of('rims-rl')} ({others}; Python {sys.version.split()[0]})"


DEPENDENCIES = ("torch", "gymnasium", "minigrid", "ale-py", "stable-baselines3")


class PrintVersion(argparse.Action):
    """``--version``: ``version_text()`` on one line (argparse's own action wraps it)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="rims", description="Recurrent Independent Mechanisms for reinforcement learning."
    )
    parser.add_argument("--version", action=PrintVersion, help="show the versions and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    train = commands.add_parser(
        "train",
        help="train a recurrent PPO agent",
        description=(
            "Train a recurrent PPO agent. With no flags: RIMs on MiniGrid-DoorKey-5x5-v0. "
            "Flags you do not give come from the env family's preset (minigrid: Minigrid and "
            "BabyAI ids; atari: ALE/ ids; gym: any other), then from the defaults below; each "
            "flag's help names the presets that set it."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_flags(train, TrainConfig, PRESETS, HELP_SECTIONS)
    add_eval_parser(commands)
    add_record_parser(commands)
    add_plot_parser(commands)
    add_compare_parser(commands)
    add_mechanisms_parser(commands)
    return parser


def add_record_parser(commands) -> None:
    rec = commands.add_parser(
        "record",
        help="record episodes of a checkpoint to .mp4 or .gif",
        description="Record episodes with a panel showing the action, the return and, for RIMs, "
        "which mechanism is active and how much it attends to the input.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    rec.add_argument("run", metavar="RUN_OR_CHECKPOINT")
    rec.add_argument("--out", required=True, metavar="FILE", help="output .mp4 or .gif")
    add_playing_flags(rec, episodes=1)
    rec.add_argument("--fps", type=positive_int, default=8, help="frames per second")
    rec.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="cut each episode after N actions; none: play each to its end",
    )


def add_playing_flags(parser: argparse.ArgumentParser, episodes: int) -> None:
    """The flags ``eval``, ``record`` and ``mechanisms`` share: where and how the checkpoint
    plays."""
    parser.add_argument("--env", default=None, help="env id; none: the run's training env")
    parser.add_argument(
        "--shift", action="append", default=[], metavar="KEY=VALUE",
        help="a shift (repeatable); with neither --env nor --shift, the run's own shifts (none "
        "where its --shift-schedule ends at 0)",
    )  # fmt: skip
    parser.add_argument("--episodes", type=positive_int, default=episodes, help="episodes")
    parser.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="seed of the episodes and actions (disjoint from training)",
    )
    parser.add_argument("--checkpoint", default="latest", choices=("latest", "best"),
                        help="which checkpoint of a run directory")  # fmt: skip
    parser.add_argument("--greedy", action="store_true", help="take the most likely action")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    add_threads_flag(parser)


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--torch-threads`` for the commands that play episodes (``rims train`` has its own)."""
    parser.add_argument(
        "--torch-threads",
        type=nonnegative_int,
        default=0,
        help="torch CPU threads (0: torch's default); give 1 to each of several jobs sharing "
        "a machine, whose torch threads would otherwise busy-wait on each other's cores",
    )


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--torch-threads`` of a command that plays episodes."""
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)


def add_plot_parser(commands) -> None:
    plot = commands.add_parser(
        "plot",
        help="plot learning curves of runs",
        description="Learning curves from the runs' TensorBoard events; runs of one config "
        "(seeds) are pooled into a mean with a min-max band.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    plot.add_argument("runs", nargs="+", metavar="RUN")
    plot.add_argument("--out", default="curves.png", metavar="FILE.png", help="output image")
    plot.add_argument(
        "--tag",
        action="append",
        default=None,
        help="scalar to plot, one panel each (repeatable); a pattern such as 'eval/*return' "
        "takes every tag it matches (default: charts/episodic_return)",
    )


def add_compare_parser(commands) -> None:
    compare = commands.add_parser(
        "compare",
        help="how likely one config is to beat another, from --pool-seeds JSON files",
        description="The probability of improvement P(A > B) of every pair of configs in "
        "'rims eval --pool-seeds --json' files (several files are read as one), per env x "
        "shift and over all rows they share, with 95% stratified bootstrap intervals over "
        "seeds. 'rims eval --pool-seeds' prints the same table for the runs it evaluates.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    compare.add_argument(
        "files",
        nargs="+",
        metavar="[LABEL=]POOLED.json",
        help="a file, or LABEL=FILE to name its configs 'LABEL: config' (for files of separate "
        "studies whose configs share a name)",
    )
    compare.add_argument("--json", default=None, metavar="FILE", help="write the table as JSON")
    compare.add_argument("--csv", default=None, metavar="FILE", help="write the table as CSV")
    compare.add_argument("--plot", default=None, metavar="FILE.png", help="grouped bar chart")


def add_mechanisms_parser(commands) -> None:
    mech = commands.add_parser(
        "mechanisms",
        help="which RIMs are active in which situations",
        description="Play evaluation episodes of a RIMs run and report, for every situation "
        "(the action taken, the quarter of the episode, how the episode ended: success, "
        "failure, ended or cut by the step limit; on Minigrid what the agent carries and "
        "what it faces; on memory tasks the cue; on Atari the lives left, and in Breakout and "
        "Pong the ball's place and way; on a mixture, the member), how often each "
        "mechanism was active, and the mutual information between each mechanism's activity "
        "and each feature beside its chance level.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    mech.add_argument("run", metavar="RUN_OR_CHECKPOINT")
    add_playing_flags(mech, episodes=32)
    mech.add_argument(
        "--suite", default=None,
        help="a built-in suite name or a suite JSON file: each row's activation rates side by side",
    )  # fmt: skip
    mech.add_argument(
        "--where", action="append", default=[], metavar="FEATURE=VALUE",
        help="report only the steps in this situation (repeatable: all features, any of a "
        "feature's values), e.g. --where 'phase=4th quarter' --where outcome=success "
        "--where outcome=failure",
    )  # fmt: skip
    mech.add_argument("--num-envs", type=positive_int, default=16, help="parallel envs")
    mech.add_argument(
        "--json", default=None, metavar="FILE", help="write the reports (a list, one a row) as JSON"
    )


def played_row(
    config: TrainConfig, env: str | None, shifts: tuple[tuple[str, str], ...]
) -> SuiteRow:
    """What ``eval`` and ``record`` play for a run without ``--suite``: ``env`` (default: the
    run's) with exactly ``shifts``; with neither, the run's target (its training env with its
    ``--shift``, or without where its ``--shift-schedule`` ends at 0)."""
    if env is None and not shifts:
        return config.target_row
    return SuiteRow(env or config.env, shifts)


def run_record(args: argparse.Namespace) -> int:
    from contextlib import closing

    from agents.checkpoint import load_policy
    from agents.record import SUFFIXES, Playback, play_episodes, write_video
    from agents.report import check_compatible
    from agents.trainer import resolve_device
    from envs.factory import check_env_id
    from envs.shifts import parse_shift

    out = check_output(args.out, SUFFIXES)
    loaded = load_policy(args.run, args.checkpoint, resolve_device(args.device))
    if args.env:
        check_env_id(args.env)
    row = played_row(loaded.config, args.env, tuple(parse_shift(s) for s in args.shift))
    env_id, shifts = row.env, row.shifts
    check_compatible(loaded, row)
    ends = []  # each episode's last view: its return, and whether --max-steps cut it

    def frames():  # streamed into the writer: a long episode is never held whole
        playback = Playback(env_id, shifts, args.episodes, args.seed, args.greedy, args.max_steps)
        played = play_episodes(loaded, playback)
        with closing(played):  # the env closes even if writing fails
            for frame, view in played:
                if view.final:
                    ends.append(view)
                yield frame

    count = write_video(frames(), out, args.fps)
    returns = ", ".join(f"{v.episode_return:.3f}{' (cut)' if v.cut else ''}" for v in ends)
    cut = f"; (cut) = stopped by --max-steps {args.max_steps}" if any(v.cut for v in ends) else ""
    print(f"wrote {out}: {count} frames, {args.episodes} episode(s), returns {returns}{cut}")
    return 0


def run_mechanisms(args: argparse.Namespace) -> int:
    from agents.checkpoint import load_policy
    from agents.mechanisms import format_report, format_rows, inspect_mechanisms
    from agents.report import check_compatible, write_json
    from agents.trainer import resolve_device
    from envs.factory import check_env_id, env_label
    from envs.shifts import parse_shift

    check_suite_flags(args)
    out = check_output(args.json, (".json",))
    where = tuple(parse_condition(text) for text in args.where)
    loaded = load_policy(args.run, args.checkpoint, resolve_device(args.device))
    if loaded.config.core != "rims":
        raise ConfigError(
            f"{loaded.label} has a {loaded.config.core} core: only RIMs have mechanisms to inspect"
        )
    if args.env:
        check_env_id(args.env)
    if args.suite:
        rows = rows_of_suite(args.suite, [loaded])[1]
    else:
        rows = [played_row(loaded.config, args.env, tuple(parse_shift(s) for s in args.shift))]
    for row in rows:
        check_compatible(loaded, row)
    reports = []
    for row in rows:
        try:
            reports.append(inspect_mechanisms(
                loaded, row, args.episodes, args.seed, args.num_envs, args.greedy, where
            ))  # fmt: skip
        except ConfigError as err:  # --where matched no step of this row
            if len(rows) == 1:
                raise
            print(f"  skipped {env_label(row.env, row.shifts)}: {err}")
    if not reports:
        raise ConfigError("--where matched no step of any row")
    print(format_report(reports[0]) if len(rows) == 1 else format_rows(reports))
    if out:
        write_json(reports, out)
    return 0


def parse_condition(text: str) -> tuple[str, str]:
    """``phase=4th quarter`` -> ``("phase", "4th quarter")``."""
    feature, sep, value = text.partition("=")
    if not sep or not feature.strip() or not value.strip():
        raise ConfigError(f"--where takes FEATURE=VALUE, got {text!r}")
    return feature.strip(), value.strip()


def run_plot(args: argparse.Namespace) -> int:
    from agents.curves import plot_curves

    out = check_output(args.out, (".png", ".pdf", ".svg"))
    runs = [Path(r) for r in args.runs]
    for run in runs:
        if not run.is_dir():
            raise ConfigError(f"{run} is not a run directory")
    groups = plot_curves(runs, out, args.tag or ["charts/episodic_return"])
    print(f"wrote {out}: " + "; ".join(f"{name}: {n} run(s)" for name, n in groups.items()))
    return 0


def builtin_suite_names() -> list[str]:
    from envs.suites import builtin_suites

    return list(builtin_suites())


def int_at_least(low: int, wanted: str, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (and <= ``high``), else "expected {wanted}, got
    '...'"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
nonnegative_int = int_at_least(0, "an integer >= 0")
seed_int = int_at_least(0, f"an integer in {SEED_RANGE}", MAX_SEED)


def add_eval_parser(commands) -> None:
    ev = commands.add_parser(
        "eval",
        help="evaluate runs on their env, a shifted env, or a suite",
        description=(
            "Evaluate one or more runs (or checkpoint files) side by side. Without --env or "
            "--suite each run's training env is used; --shift KEY=VALUE shifts it (keys: "
            f"{', '.join(SHIFTS)}). Suites: {', '.join(builtin_suite_names())}, atari-modes, "
            "or a suite JSON file."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ev.add_argument("runs", nargs="+", metavar="RUN_OR_CHECKPOINT")
    add_playing_flags(ev, episodes=100)
    ev.add_argument("--suite", default=None, help="a built-in suite name or a suite JSON file")
    ev.add_argument("--num-envs", type=positive_int, default=16, help="parallel envs")
    ev.add_argument("--json", default=None, metavar="FILE", help="write the rows as JSON")
    ev.add_argument("--csv", default=None, metavar="FILE", help="write the rows as CSV")
    ev.add_argument("--plot", default=None, metavar="FILE.png", help="grouped bar chart")
    ev.add_argument(
        "--pool-seeds", action="store_true",
        help="one column per config, not per run: runs that differ only in seed are pooled into "
        "the mean over seeds with a 95%% interval over seeds (JSON, CSV, plot too)",
    )  # fmt: skip
    ev.add_argument(
        "--interval", choices=["bootstrap", "t"], default=None,
        help="with --pool-seeds, the interval over seeds: the percentile bootstrap (default; "
        "too narrow for few seeds) or Student's t (wider for few seeds, assumes their returns "
        "roughly normal)",
    )  # fmt: skip


def check_output(path: str | None, suffixes: tuple[str, ...]) -> Path | None:
    """An output path whose folder exists, that is not a folder itself, and whose extension is
    one of ``suffixes`` (checked before any work, so that a long evaluation is not lost)."""
    if path is None:
        return None
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"{path}: the extension must be one of {', '.join(suffixes)}")
    if not out.parent.is_dir():
        what = "is not a folder" if out.parent.exists() else "does not exist"
        raise ConfigError(f"{path}: folder {out.parent} {what}")
    if out.is_dir():
        raise ConfigError(f"{path} is a folder")
    return out


def check_suite_flags(args: argparse.Namespace) -> None:
    if args.suite and (args.env or args.shift):
        raise ConfigError("--suite takes its envs and shifts from the suite; drop --env/--shift")


def rows_of_suite(spec: str, runs: Sequence[LoadedPolicy]) -> tuple[Suite, list[SuiteRow]]:
    """Suite ``spec``'s rows for ``runs``; of a generated suite (atari-modes), those every run
    can play (the others are named in one line each)."""
    from agents.report import compatible_rows
    from envs.suites import GENERATED, suite_rows

    suite, rows = suite_rows(spec, [r.config.env for r in runs])
    return suite, compatible_rows(runs, rows) if spec in GENERATED else rows


def run_eval(args: argparse.Namespace) -> int:
    from agents import pooled, report
    from agents.checkpoint import load_policy
    from agents.trainer import resolve_device
    from envs.factory import check_env_id
    from envs.shifts import parse_shift

    check_suite_flags(args)
    if args.interval and not args.pool_seeds:
        raise ConfigError("--interval chooses the interval over seeds of --pool-seeds; add it")
    outputs = {
        "json": check_output(args.json, (".json",)),
        "csv": check_output(args.csv, (".csv",)),
        "plot": check_output(args.plot, (".png", ".pdf", ".svg")),
    }
    shifts = tuple(parse_shift(s) for s in args.shift)
    if args.env:
        check_env_id(args.env)
    device = resolve_device(args.device)
    runs = [load_policy(path, args.checkpoint, device) for path in args.runs]
    if args.pool_seeds:
        pooled.check_one_run_a_seed(runs)
    if args.suite:
        suite, rows = rows_of_suite(args.suite, runs)
        title = f"suite {suite.name}"
    else:
        rows = list(dict.fromkeys(played_row(r.config, args.env, shifts) for r in runs))
        title = ", ".join(dict.fromkeys(row.env for row in rows))
    print(f"evaluating {len(runs)} run(s) on {len(rows)} env x shift row(s), "
          f"{args.episodes} episodes each, seed {args.seed}")  # fmt: skip
    results = report.evaluate_runs(
        runs, rows, args.episodes, args.seed, deterministic=args.greedy, num_envs=args.num_envs
    )
    if args.pool_seeds:
        # one column per config
        table, writer = pooled.pool(runs, results, args.interval or "bootstrap"), pooled
    else:
        table, writer = results, report  # one column per run
    print(writer.format_table(table))
    if args.pool_seeds:
        from agents import aggregate, compare

        overall = aggregate.summary(table)  # none for a single row
        if overall:
            print()
            print(overall)
        comparisons = compare.compare(table)  # none for one config, or configs on other rows
        if comparisons:
            print()
            print(compare.format_table(comparisons))
    if outputs["json"]:
        writer.write_json(table, outputs["json"])
    if outputs["csv"]:
        writer.write_csv(table, outputs["csv"])
    if outputs["plot"]:
        writer.plot(table, outputs["plot"], title)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from agents import aggregate, compare, report

    outputs = [
        check_output(args.json, (".json",)),
        check_output(args.csv, (".csv",)),
        check_output(args.plot, (".png", ".pdf", ".svg")),
    ]
    rows = compare.merge([compare.read_labelled(f) for f in args.files])
    if len({r.config for r in rows}) < 2:
        raise ConfigError("the files hold one config: there is nothing to compare it with")
    comparisons = compare.compare(rows)
    if not comparisons:
        raise ConfigError("no two configs were evaluated on a common env x shift")
    overall = aggregate.summary(rows)  # none where the configs share fewer than two rows
    if overall:
        print(overall)
        print()
    print(compare.format_table(comparisons))
    if outputs[0]:
        report.write_json(comparisons, outputs[0])
    if outputs[1]:
        report.write_csv(comparisons, outputs[1], compare.FIELDS)
    if outputs[2]:
        compare.plot(comparisons, outputs[2])
    return 0


def config_for_train(given: dict) -> TrainConfig:
    """The config to train with: the given flags over the preset, or, with ``--resume``, the
    run's saved config with only the flags that may change on resume."""
    if not given.get("resume"):
        return resolve_config(given)
    from agents.trainer import saved_config

    if not given.get("run_dir"):
        raise ConfigError("--resume needs --run-dir DIR (the run to continue)")
    saved = saved_config(Path(given["run_dir"]))
    current = saved_fields(saved)  # as from_dict reads it: a field saved before it existed too

    def as_saved(value: object) -> object:  # config.json holds a tuple field as a list
        return list(value) if isinstance(value, tuple) else value

    changed = sorted(
        k for k, v in given.items()
        if k not in NOT_LEARNED and as_saved(current.get(k)) != as_saved(v)
    )  # fmt: skip
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ConfigError(f"cannot change {flags} when resuming (the run's config is fixed)")
    try:
        return TrainConfig.from_dict({**saved, **given, "overwrite": False})
    except TypeError as err:
        path = Path(given["run_dir"]) / "config.json"
        raise ConfigError(f"{path} does not fit this version of rims-rl: {err}") from None


def run_train(given: dict) -> int:
    try:
        config = config_for_train(given)
    except USAGE_ERRORS:
        if quiet_rank() and not given.get("resume"):  # decided by the flags: rank 0 says it
            return 0
        raise  # a resumed run's files may differ from node to node: every rank says its own
    from agents.distributed import OtherRankStopped
    from agents.selection import selection_line
    from agents.trainer import CHECKPOINT_DIR, TrainingStopped, train

    try:
        result = train(config)
    except TrainingStopped as stop:
        print(f"rims: {stop}", file=sys.stderr)
        return stop.exit_code
    except OtherRankStopped:  # the rank that stopped the job says why, and torchrun names it
        return 0
    if not result.is_main:
        return 0
    if result.ranks > 1:
        same = "yes" if result.parameters_identical else "NO"
        print(f"data-parallel over {result.ranks} processes; parameters identical on all: {same}")
    recent = result.mean_recent_return
    print(
        f"trained to step {result.global_step:,} in {result.seconds:.0f} s; "
        f"mean return of the last 100 episodes: {'n/a' if recent is None else f'{recent:.3f}'}; "
        f"run dir: {result.run_dir}"
    )
    line = None if result.selection is None else selection_line(*result.selection, k=config.k)
    if line is not None:
        print(line)
    best = result.best_evaluation
    if best is not None:
        at = "" if best.step is None else f" at step {best.step:,}"
        path = result.run_dir / CHECKPOINT_DIR / "best.pt"
        print(f"best eval/return {best.mean_return:.3f}{at}: {path}")
    gate = config.schedule_after_return
    if gate is not None:
        start = result.schedule_start
        print(
            f"--shift-schedule started at step {start:,}" if start is not None else
            f"--shift-schedule never started: the mean return of the last 100 episodes stayed "
            f"below {gate:g} (--schedule-after-return)"
        )  # fmt: skip
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
        if args.command in ("eval", "record", "mechanisms"):
            set_threads(args)
        if args.command == "eval":
            return run_eval(args)
        if args.command == "record":
            return run_record(args)
        if args.command == "plot":
            return run_plot(args)
        if args.command == "compare":
            return run_compare(args)
        if args.command == "mechanisms":
            return run_mechanisms(args)
    except USAGE_ERRORS as err:
        print(f"rims: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rims: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`rims eval ... | head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the exit flush
        return 141
    except OSError as err:  # a full disk, a file not permitted, while writing or reading
        where = f"{err.filename}: " if err.filename else ""
        print(f"rims: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    return 2


COMMANDS = ("train", "eval", "record", "plot", "compare", "mechanisms", "-h", "--help", "--version")


def script_main() -> int:
    """``python train.py ARGS`` == ``rims train ARGS`` (a subcommand may also be named)."""
    argv = sys.argv[1:]
    if not argv or argv[0] not in COMMANDS:
        argv = ["train", *argv]
    return main(argv)


if __name__ == "__main__":
    sys.exit(script_main())
