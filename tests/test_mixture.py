"""Shifts with several values (``size=5,6,8``): mixtures of levels to train and evaluate on; and
``--shift-schedule``: a share of shifted episodes that changes over a run."""

from __future__ import annotations

import json
from collections import Counter

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from agents.checkpoint import load_policy
from agents.config import resolve_config
from agents.evaluate import evaluate
from agents.record import fit
from agents.schedule import Schedule, ScheduleError, ScheduleStart
from agents.training_eval import eval_targets
from envs.factory import make_env, make_vector_env
from envs.mixture import UNSHIFTED, ShiftShare, combinations
from envs.shifts import ShiftError
from policies.actor_critic import ActorCritic
from policies.spec import PolicySpec
from tests.test_cli import TINY, exit_code, scalars
from tests.test_training_eval import suite_file
from train import main

DOORKEY = "MiniGrid-DoorKey-5x5-v0"


def test_combinations_are_the_product_of_the_listed_values():
    assert combinations([("size", "5"), ("noise", "0.1")]) == [(("size", "5"), ("noise", "0.1"))]
    assert combinations([("size", "5,6"), ("noise", "0, 0.1"), ("colors", "permute")]) == [
        (("size", "5"), ("noise", "0"), ("colors", "permute")),
        (("size", "5"), ("noise", "0.1"), ("colors", "permute")),
        (("size", "6"), ("noise", "0"), ("colors", "permute")),
        (("size", "6"), ("noise", "0.1"), ("colors", "permute")),
    ]
    assert combinations([]) == [()]


def played_sizes(env, resets: int, seed: int) -> list[int]:
    sizes = []
    for i in range(resets):
        env.reset(seed=seed if i == 0 else None)
        sizes.append(env.unwrapped.width)  # the member playing this episode
    return sizes


def test_each_episode_draws_a_member_and_a_seed_fixes_the_draws_and_levels():
    env = make_env(DOORKEY, shifts=[("size", "5,6,8")])
    sizes = played_sizes(env, 300, seed=4)
    counts = Counter(sizes)
    assert set(counts) == {5, 6, 8} and min(counts.values()) > 70  # about 100 each
    again = make_env(DOORKEY, shifts=[("size", "5,6,8")])
    assert played_sizes(again, 300, seed=4) == sizes
    assert played_sizes(again, 300, seed=5) != sizes
    # Levels too: the same seed gives the same first observation.
    first = [make_env(DOORKEY, shifts=[("size", "5,6,8")]).reset(seed=9)[0]["image"]
             for _ in range(2)]  # fmt: skip
    assert (first[0] == first[1]).all()
    # The member is the env built with that shift alone: DoorKey's step limit follows its size.
    env.reset(seed=1)
    assert env.unwrapped.max_steps == 10 * env.unwrapped.width**2
    assert env.label == f"size={env.unwrapped.width}"


def test_members_must_agree_on_observations():
    with pytest.raises(ShiftError, match="view=5 and view=7 do not"):
        make_env(DOORKEY, shifts=[("view", "5,7")])


def test_a_frame_of_another_size_is_fitted_to_the_first_ones():
    small = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    fitted = fit(small, (4, 8))  # scaled x2 to 4 x 4, centred in 4 x 8
    assert fitted.shape == (4, 8, 3)
    assert (fitted[:, :2] == 0).all() and (fitted[:, 6:] == 0).all()
    assert (fitted[:2, 2:4] == small[0, 0]).all() and (fitted[2:, 4:6] == small[1, 1]).all()
    assert fit(small, (2, 2)) is small


def test_a_vector_env_plays_every_member():
    envs = make_vector_env(DOORKEY, 4, shifts=[("size", "5,16")])
    seen = set()
    try:
        envs.reset(seed=0)
        for _ in range(400):  # 5x5 episodes end within 250 steps: new draws follow
            envs.step(envs.action_space.sample())
            seen |= {env.unwrapped.width for env in envs.unwrapped.envs}
    finally:
        envs.close()
    assert seen == {5, 16}


def test_a_mixture_is_evaluated_stratified_an_even_share_of_episodes_per_member():
    env = make_env(DOORKEY)
    policy = ActorCritic(env.observation_space, 7, PolicySpec(hidden_size=4, num_units=3, k=2))
    env.close()
    mixed = evaluate(policy, DOORKEY, episodes=7, seed=3, num_envs=2, shifts=[("size", "5,6")])
    # 4 episodes on 5x5 (the remainder goes to the first member) and 3 on 6x6, each as if that
    # member alone were evaluated with the same seed: no random draw of members.
    alone = [
        evaluate(policy, DOORKEY, episodes=n, seed=3, num_envs=2, shifts=[("size", size)])
        for size, n in (("5", 4), ("6", 3))
    ]
    assert mixed.returns == alone[0].returns + alone[1].returns
    assert mixed.lengths == alone[0].lengths + alone[1].lengths
    assert mixed.successes == alone[0].successes + alone[1].successes
    # Fewer episodes than members: the last members get none.
    assert evaluate(policy, DOORKEY, 1, 3, 2, shifts=[("size", "5,6")]).returns == (
        evaluate(policy, DOORKEY, 1, 3, 2, shifts=[("size", "5")]).returns
    )


def test_train_eval_and_record_on_a_mixture(tmp_path, capsys):
    run = tmp_path / "mixed"
    argv = ["train", "--shift", "size=5,6", "--shift", "view=9", "--total-steps", "64",
            "--eval-every", "2", "--eval-episodes", "2", "--run-dir", str(run), *TINY]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["shift"] == ["size=5,6", "view=9"]
    # The policy was built for the 9x9 view, and a checkpoint alone rebuilds it.
    loaded = load_policy(run)
    assert loaded.observation_space["image"].shape == (9, 9, 3)
    assert "eval at step 64" in capsys.readouterr().out
    # eval and record play the training shifts by default ...
    assert main(["eval", str(run), "--episodes", "2"]) == 0
    assert "size=5,6 view=9" in capsys.readouterr().out
    # Episodes on grids of two sizes make one video: every frame keeps the first one's size.
    video = tmp_path / "m.mp4"
    assert main(["record", str(run), "--out", str(video), "--episodes", "4"]) == 0
    frames = iio.imread(video)
    assert frames.ndim == 4 and frames.shape[0] > 4
    # ... and --shift replaces them: without view=9 the 7x7 view does not fit the policy.
    assert exit_code(["eval", str(run), "--shift", "size=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "takes image of shape (9, 9, 3)" in err and len(err.splitlines()) == 1
    assert (
        main(["eval", str(run), "--shift", "size=8", "--shift", "view=9", "--episodes", "2"]) == 0
    )
    # What is trained on is learned: a resumed run may not change it, and may repeat it (the
    # flags give a tuple, config.json holds a list).
    assert exit_code(["train", "--run-dir", str(run), "--resume", "--shift", "size=7"]) == 2
    assert "cannot change --shift when resuming" in capsys.readouterr().err
    same = ["--shift", "size=5,6", "--shift", "view=9", "--total-steps", "96"]
    assert main(["train", "--run-dir", str(run), "--resume", *same]) == 0
    assert "trained to step 96" in capsys.readouterr().out


def test_evaluation_during_training_starts_with_the_training_shifts(tmp_path):
    suite = tmp_path / "suite.json"
    rows = [
        {"env": "$RUN"},
        {"env": "$RUN", "shifts": ["size=5,6"]},
        {"env": "$RUN", "shifts": ["size=7"]},
    ]
    suite.write_text(json.dumps({"s": {"rows": rows}}))
    config = resolve_config({"shift": ("size=5,6",), "eval_every": 1, "eval_suite": str(suite)})
    env = make_env(config.env, shifts=config.train_shifts)
    targets = eval_targets(config, env.observation_space, int(env.action_space.n))
    env.close()
    # The training mixture is eval/return (and chooses best.pt); the suite's copy of it counts
    # once; the unshifted env, whose shift label is empty, is named so that it has a tag.
    assert [(t.row.label, t.name) for t in targets] == [
        ("size=5,6", ""),
        ("", "unshifted"),
        ("size=7", "size=7"),
    ]
    assert [t.tag("return") for t in targets] == [
        "eval/return",
        "eval/unshifted/return",
        "eval/size=7/return",
    ]


# --- a share of shifted episodes (--shift-schedule) ---------------------------------------------


def test_a_schedule_interpolates_between_its_points_and_holds_past_them():
    schedule = Schedule.parse("100:1, 300:0.5,1_000:0")
    assert schedule.steps == (100, 300, 1000) and schedule.values == (1.0, 0.5, 0.0)
    at = [schedule(step) for step in (0, 100, 200, 300, 650, 1000, 5000)]
    assert at == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    assert Schedule.parse("0:0.3")(10**9) == pytest.approx(0.3)
    for bad in ("", "100", "1:x", "-1:0.5", "5:1.5", "5:nan", "a:1", "1:1,"):
        with pytest.raises(ScheduleError, match="STEP:VALUE"):
            Schedule.parse(bad)
    with pytest.raises(ScheduleError, match="must increase"):
        Schedule.parse("0:1,500:0.5,500:0")


def played_shifts(env: ShiftShare, resets: int, seed: int | None) -> list[str]:
    """The label of the member each of ``resets`` episodes was played in: the shifts, or
    ``unshifted``."""
    labels = []
    for i in range(resets):
        env.reset(seed=seed if i == 0 else None)
        labels.append(env.label)
    return labels


def test_a_share_of_episodes_is_shifted_and_can_change_between_episodes():
    env = make_env(DOORKEY, shifts=[("size", "6")], shift_share=1.0)
    assert isinstance(env, ShiftShare)
    assert set(played_shifts(env, 50, seed=0)) == {"size=6"}
    assert env.unwrapped.width == 6
    env.set_shift_share(0.0)
    assert set(played_shifts(env, 50, seed=None)) == {UNSHIFTED}
    assert env.unwrapped.width == 5
    env.set_shift_share(0.25)
    counts = Counter(played_shifts(env, 400, seed=3))
    assert 60 < counts["size=6"] < 140  # about 100 of 400
    # A seed fixes the draws, as in a mixture; the shifted member may be a mixture itself.
    assert played_shifts(env, 400, seed=3) == played_shifts(env, 400, seed=3)
    mixed = make_env(DOORKEY, shifts=[("size", "6,7")], shift_share=0.5)
    labels, widths = set(), set()
    for i in range(100):
        mixed.reset(seed=1 if i == 0 else None)
        labels.add(mixed.label)
        widths.add(mixed.unwrapped.width)
    assert labels == {"size=6,7", UNSHIFTED} and widths == {5, 6, 7}
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        env.set_shift_share(1.5)
    # Both members are built: the unshifted one must fit the shifted one's spaces.
    with pytest.raises(ShiftError, match="view=9 and unshifted do not"):
        make_env(DOORKEY, shifts=[("view", "9")], shift_share=1.0)


def test_the_other_episodes_may_play_other_shifts():
    env = make_env(DOORKEY, shifts=[("size", "8")], shift_share=0.5, other_shifts=[("size", "6,7")])
    played: Counter[tuple[str, int]] = Counter()
    for i in range(300):
        env.reset(seed=2 if i == 0 else None)
        played[(env.label, env.unwrapped.width)] += 1
    # Half the episodes play the shifts, the others the other mixture: no episode is unshifted.
    assert set(played) == {("size=8", 8), ("size=6,7", 6), ("size=6,7", 7)}
    assert 110 < played[("size=8", 8)] < 190
    env.set_shift_share(0.0)
    assert set(played_shifts(env, 30, seed=None)) == {"size=6,7"}
    with pytest.raises(ShiftError, match="size=8 and view=9 do not"):
        make_env(DOORKEY, shifts=[("size", "8")], shift_share=1.0, other_shifts=[("view", "9")])


def test_a_vector_env_shares_out_the_share_it_is_given():
    envs = make_vector_env(DOORKEY, 3, shifts=[("size", "16")], shift_share=1.0)
    try:
        envs.reset(seed=0)
        assert {env.unwrapped.width for env in envs.unwrapped.envs} == {16}
        envs.unwrapped.call("set_shift_share", 0.0)  # what the trainer calls
        envs.reset(seed=1)
        assert {env.unwrapped.width for env in envs.unwrapped.envs} == {5}
    finally:
        envs.close()


def test_a_run_follows_its_schedule_and_a_resumed_run_picks_it_up(tmp_path, monkeypatch):
    given: list[float] = []
    set_share = ShiftShare.set_shift_share

    def recorded(self: ShiftShare, share: float) -> None:
        given.append(share)
        set_share(self, share)

    monkeypatch.setattr(ShiftShare, "set_shift_share", recorded)
    run = tmp_path / "scheduled"
    flags = ["--shift", "size=6", "--shift-schedule", "0:1,64:0", "--run-dir", str(run), *TINY]
    assert main(["train", "--total-steps", "64", *flags]) == 0  # 2 updates of 32 steps
    # The envs are built with the share at step 0, then every env (2) is given the share at
    # each update's start: 1 at step 0, 0.5 at step 32.
    assert given[-4:] == [1.0, 1.0, 0.5, 0.5] and set(given[:-4]) == {1.0}
    assert [(e.step, e.value) for e in scalars(run)["charts/shift_share"]] == [(32, 1.0), (64, 0.5)]
    given.clear()
    assert main(["train", "--resume", "--total-steps", "96", *flags]) == 0
    assert given[-2:] == [0.0, 0.0]  # the third update starts at step 64
    assert scalars(run)["charts/shift_share"][-1].value == 0.0
    assert json.loads((run / "config.json").read_text())["shift_schedule"] == "0:1,64:0"
    # It is learned: a resumed run may not change it.
    changed = ["--shift-schedule", "0:1", "--total-steps", "128"]
    assert exit_code(["train", "--resume", "--run-dir", str(run), *changed]) == 2


def test_a_schedule_start_waits_for_a_full_window_whose_mean_reaches_the_return():
    start = ScheduleStart.new_run(0.5)
    assert start.start is None and start.step(1_000) == 0
    assert start.reached(100, [1.0] * 99) is None  # a window not yet full: a lucky few don't count
    assert start.reached(200, [0.0] * 60 + [1.0] * 40) is None  # mean 0.4
    assert start.step(200) == 0
    assert start.reached(300, [0.0] * 60 + [1.0] * 50) == 0.5  # the last 100: mean 0.5
    assert (start.start, start.step(300), start.step(450)) == (300, 0, 150)
    assert start.reached(400, [1.0] * 100) is None  # started once, for good
    assert start.start == 300
    always = ScheduleStart.new_run(None)  # no return asked for: the run's own steps
    assert always.step(450) == 450 and always.reached(10, [1.0] * 100) is None
    assert ScheduleStart.new_run(0.5, window=3).reached(7, [0.0, 1.0, 1.0, 0.5]) == (2.5 / 3)


def gated_flags(run, after_return: str) -> list[str]:
    """A curriculum whose first episodes (``max_steps=1``) end at every step, so that 2 envs x
    16 steps finish 32 episodes an update and the window of 100 fills in the 4th update."""
    return [
        "--shift", "size=6", "--other-shift", "max_steps=1", "--shift-schedule", "0:0,64:1",
        "--schedule-after-return", after_return, "--run-dir", str(run), *TINY,
    ]  # fmt: skip


def test_a_schedule_after_a_return_starts_where_the_return_is_reached_and_resumes(tmp_path, capsys):
    run = tmp_path / "gated"
    flags = gated_flags(run, "-1")  # any full window reaches it
    assert main(["train", "--total-steps", "192", *flags]) == 0
    out = capsys.readouterr().out
    assert "step 128: mean return of the last 100 episodes" in out
    assert "--shift-schedule started at step 128" in out
    shares = [(e.step, e.value) for e in scalars(run)["charts/shift_share"]]
    # Waiting through updates 1-4 (share 0), then 0:0,64:1 from step 128: 0 at 128, 0.5 at 160.
    assert shares == [(32, 0.0), (64, 0.0), (96, 0.0), (128, 0.0), (160, 0.0), (192, 0.5)]
    latest = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert latest["schedule_start"] == 128
    assert main(["train", "--resume", "--total-steps", "256", *flags]) == 0
    assert "--shift-schedule started at step 128" in capsys.readouterr().out
    resumed = [(e.step, e.value) for e in scalars(run)["charts/shift_share"]][-2:]
    assert resumed == [(224, 1.0), (256, 1.0)]  # steps 192 and 224 are 64 and 96 past 128


def test_a_schedule_whose_return_is_never_reached_stays_at_its_start(tmp_path, capsys):
    run = tmp_path / "waiting"
    flags = gated_flags(run, "2")  # DoorKey's return is at most 1
    assert main(["train", "--total-steps", "160", *flags]) == 0
    out = capsys.readouterr().out
    assert "--shift-schedule never started" in out and "below 2" in out
    assert {e.value for e in scalars(run)["charts/shift_share"]} == {0.0}
    assert (
        torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["schedule_start"] is None
    )
    assert main(["train", "--resume", "--total-steps", "224", *flags]) == 0
    assert {e.value for e in scalars(run)["charts/shift_share"]} == {0.0}  # still waiting
    changed = ["--schedule-after-return", "-1", "--total-steps", "256"]  # it is learned
    assert exit_code(["train", "--resume", "--run-dir", str(run), *changed]) == 2


@pytest.mark.parametrize(
    ("saved_by", "kept"),
    [("this version", True), ("one without the step", True), ("an older one", False)],
)
def test_a_resumed_run_keeps_its_best_evaluation_only_if_it_was_of_the_target(
    tmp_path, capsys, saved_by, kept
):
    """Checkpoints written before a schedule ending at 0 made the env alone the target hold a
    best evaluation of the shifts, which a resumed run must not compare with its target's."""
    run = tmp_path / "faded"
    flags = ["--shift", "size=6", "--shift-schedule", "0:1,32:0", "--eval-every", "1"]
    flags += ["--eval-episodes", "2", "--run-dir", str(run), *TINY]
    assert main(["train", "--total-steps", "64", *flags]) == 0
    latest, best = run / "checkpoints" / "latest.pt", run / "checkpoints" / "best.pt"
    best_before = torch.load(best, weights_only=True)["global_step"]
    payload = torch.load(latest, weights_only=True)
    assert payload["best_eval_shifts"] == ""  # the env alone
    assert payload["best_eval_step"] == best_before
    payload["best_eval_return"] = 2.0  # more than MiniGrid pays: nothing beats it
    if saved_by != "this version":
        del payload["best_eval_step"]
    if saved_by == "an older one":
        del payload["best_eval_shifts"]
    torch.save(payload, latest)
    capsys.readouterr()
    assert main(["train", "--resume", "--total-steps", "96", *flags]) == 0
    after = torch.load(best, weights_only=True)
    assert after["global_step"] == (best_before if kept else 96)
    assert (torch.load(latest, weights_only=True)["best_eval_return"] == 2.0) == kept
    # The run's last line names what best.pt holds.
    last = capsys.readouterr().out.strip().splitlines()[-1]
    if saved_by == "this version":
        assert last == f"best eval/return 2.000 at step {best_before}: {best}"
    elif kept:  # the step is not known
        assert last == f"best eval/return 2.000: {best}"
    else:
        assert last == f"best eval/return {after['best_eval_return']:.3f} at step 96: {best}"


@pytest.mark.parametrize(
    ("schedule", "other", "labels"),
    [
        (None, (), [("size=6", "")]),
        # Ends on the shifts, in part; the unshifted part of training is followed too.
        ("0:1,1000:0.5", (), [("size=6", ""), ("", "unshifted")]),
        ("0:0,1000:1", (), [("size=6", ""), ("", "unshifted")]),  # starts unshifted
        ("0:1,1000:0", (), [("", ""), ("size=6", "size=6")]),  # ends on the env's own levels
        # With --other-shift, its shifts take the unshifted env's place.
        ("0:0,1000:1", ("size=7",), [("size=6", ""), ("size=7", "size=7")]),
        ("0:1,1000:0", ("size=7",), [("size=7", ""), ("size=6", "size=6")]),
    ],
)
def test_the_target_is_where_the_schedule_ends(schedule, other, labels):
    config = resolve_config({
        "shift": ("size=6",), "shift_schedule": schedule, "other_shift": other, "eval_every": 1,
    })  # fmt: skip
    env = make_env(config.env, shifts=config.train_shifts)
    targets = eval_targets(config, env.observation_space, int(env.action_space.n))
    env.close()
    assert [(t.row.label, t.name) for t in targets] == labels
    assert targets[0].row == config.target_row and targets[0].tag("return") == "eval/return"


def test_a_run_that_ends_unshifted_is_evaluated_unshifted(tmp_path, capsys):
    run = tmp_path / "faded"
    flags = ["--shift", "size=6", "--shift-schedule", "0:1,32:0", "--eval-every", "1"]
    argv = ["train", *flags, "--eval-episodes", "2", "--total-steps", "64", "--run-dir", str(run)]
    assert main([*argv, *TINY]) == 0
    logged = scalars(run)
    # eval/return (which chooses best.pt) is the unshifted env; the shifts are followed too.
    assert len(logged["eval/return"]) == len(logged["eval/size=6/return"]) == 2
    assert "eval/shifted_return" in logged
    assert (run / "checkpoints" / "best.pt").exists()
    capsys.readouterr()
    # rims eval plays the target by default, and the shifts when given.
    assert main(["eval", str(run), "--episodes", "2"]) == 0
    assert "size=6" not in capsys.readouterr().out
    assert main(["eval", str(run), "--shift", "size=6", "--episodes", "2"]) == 0
    assert "size=6" in capsys.readouterr().out


def test_a_curriculum_from_one_mixture_to_another_trains_evaluates_and_plays_its_target(
    tmp_path, capsys
):
    run = tmp_path / "grown"
    flags = ["--shift", "size=6,7", "--other-shift", "size=5", "--shift-schedule", "0:0,32:1"]
    argv = ["train", *flags, "--eval-every", "1", "--eval-episodes", "2", "--run-dir", str(run)]
    assert main([*argv, "--total-steps", "64", *TINY]) == 0
    logged = scalars(run)
    evaluated = sorted(t.removesuffix("/return") for t in logged if t.endswith("/return"))
    assert evaluated == ["eval", "eval/size=5"]  # the target (the shifts), then the other part
    assert [(e.step, e.value) for e in logged["charts/shift_share"]] == [(32, 0.0), (64, 1.0)]
    assert json.loads((run / "config.json").read_text())["other_shift"] == ["size=5"]
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2"]) == 0  # the target: the 6x6 and 7x7 mixture
    assert "size=6,7" in capsys.readouterr().out
    # It is learned: a resumed run keeps it (read back from config.json) and may not change it.
    changed = ["--other-shift", "size=6", "--total-steps", "96"]
    assert exit_code(["train", "--resume", "--run-dir", str(run), *changed]) == 2
    assert "cannot change --other-shift" in capsys.readouterr().err
    assert main(["train", "--resume", "--run-dir", str(run), "--total-steps", "96"]) == 0
    assert scalars(run)["eval/size=5/return"][-1].step == 96


def test_a_run_that_ends_in_part_shifted_follows_both_parts(tmp_path):
    run = tmp_path / "half"
    flags = ["--shift", "size=6", "--shift-schedule", "0:1,32:0.5", "--eval-every", "1"]
    suite = suite_file(tmp_path, {"env": "$RUN", "shifts": ["size=7"]})
    argv = ["train", *flags, "--eval-episodes", "2", "--total-steps", "64", "--run-dir", str(run)]
    assert main([*argv, "--eval-suite", suite, *TINY]) == 0
    logged = scalars(run)
    evaluated = sorted(t.removesuffix("/return") for t in logged if t.endswith("/return"))
    assert evaluated == ["eval", "eval/size=7", "eval/unshifted"]
    unshifted, other = logged["eval/unshifted/return"], logged["eval/size=7/return"]
    expected = [(a.value + b.value) / 2 for a, b in zip(unshifted, other)]
    assert [e.value for e in logged["eval/shifted_return"]] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shift-schedule", "0:1"], "--shift-schedule needs --shift"),
        (["--shift", "size=6", "--shift-schedule", "0:2"], "a value in [0, 1], got '0:2'"),
        (["--shift", "size=6", "--shift-schedule", "9:1,5:0"], "steps must increase"),
        (["--shift", "view=9", "--shift-schedule", "0:1"], "view=9 and unshifted do not"),
        (["--shift", "size=6", "--other-shift", "size=7"], "--other-shift needs --shift-schedule"),
        (
            ["--shift", "size=6", "--shift-schedule", "0:1", "--other-shift", "view=9"],
            "size=6 and view=9 do not",
        ),
        (
            ["--shift", "size=6", "--shift-schedule", "0:1", "--other-shift", "size=x"],
            "--other-shift: shift size takes an integer",
        ),
        (
            ["--shift", "size=6", "--shift-schedule", "0:1", "--other-shift", "size"],
            "--other-shift: a shift is KEY=VALUE",
        ),
        (
            ["--shift", "size=6", "--schedule-after-return", "0.9"],
            "--schedule-after-return needs --shift-schedule",
        ),
        (
            ["--shift", "size=6", "--shift-schedule", "0:1", "--schedule-after-return", "inf"],
            "--schedule-after-return must be a finite number",
        ),
    ],
)
def test_a_bad_schedule_is_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    run = tmp_path / "bad"
    assert exit_code(["train", *flags, "--run-dir", str(run), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not run.exists()
