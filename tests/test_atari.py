"""Atari: both env paths, their agreement, flavours, reward clipping and lives, CPU training."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.checkpoint import load_policy
from agents.config import resolve_config
from agents.evaluate import evaluate
from agents.mechanisms import BALL_FEATURES, ball_situation, inspect_mechanisms
from agents.rollout import RolloutCollector
from agents.storage import RolloutStorage
from envs import atari_ram
from envs.atari import AtariSettings, fold_seed, make_atari_vector_env
from envs.factory import make_env, make_vector_env
from envs.shifts import ShiftError
from envs.suites import SuiteRow
from policies.actor_critic import ActorCritic
from policies.spec import PolicySpec
from tests.test_cli import exit_code
from train import main

BREAKOUT, PONG = "ALE/Breakout-v5", "ALE/Pong-v5"


@pytest.mark.parametrize("path", ["fast", "flavoured"])
def test_observation_contract_on_both_paths(path):
    envs = make_atari_vector_env(BREAKOUT, 2, AtariSettings(frame_stack=4), path=path)
    obs, info = envs.reset(seed=0)
    assert set(obs) == {"image"} and obs["image"].shape == (2, 4, 84, 84)
    assert obs["image"].dtype == np.uint8
    assert envs.single_observation_space["image"].shape == (4, 84, 84)
    assert envs.single_action_space.n == 4 and "lives" in info
    obs, rewards, terminated, truncated, info = envs.step(np.array([1, 3]))
    assert obs["image"].shape == (2, 4, 84, 84) and rewards.shape == (2,)
    envs.close()


def test_fast_and_flavoured_paths_agree():
    """With noops and sticky actions off (the only randomness), the C++ vector env and the
    Gymnasium wrapper stack give identical frames, rewards and episode ends."""
    settings = AtariSettings(frame_stack=2, noop_max=0, repeat_action_probability=0.0)
    fast = make_atari_vector_env(PONG, 2, settings, path="fast")
    slow = make_atari_vector_env(PONG, 2, settings, path="flavoured")
    a, _ = fast.reset(seed=0)
    b, _ = slow.reset(seed=0)
    assert np.array_equal(a["image"], b["image"])
    rng = np.random.default_rng(0)
    for _ in range(150):
        actions = rng.integers(6, size=2)
        a, ra, ta, tra, _ = fast.step(actions)
        b, rb, tb, trb, _ = slow.step(actions)
        assert np.array_equal(a["image"], b["image"])
        assert np.array_equal(ra, rb) and np.array_equal(ta, tb) and np.array_equal(tra, trb)
    fast.close()
    slow.close()


@pytest.mark.parametrize("single_envs", [False, True])
def test_evaluation_counts_episodes_cut_at_the_frame_cap_on_both_paths(single_envs):
    # 400 emulator frames (100 steps of 4) end no game of Pong: every episode is cut.
    kwargs = {"max_episode_frames": 400}
    env = make_env("ALE/Pong-v5", **kwargs)
    policy = ActorCritic(env.observation_space, int(env.action_space.n), PolicySpec(hidden_size=8))
    env.close()
    played = evaluate(policy, "ALE/Pong-v5", 2, seed=0, num_envs=2, env_kwargs=kwargs,
                      single_envs=single_envs)  # fmt: skip
    assert played.truncated == [True, True] and max(played.lengths) <= 100


def test_flavoured_env_with_mode_and_difficulty():
    env = make_env(BREAKOUT, shifts=[("mode", "4"), ("difficulty", "1")], frame_stack=1)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (1, 84, 84)
    assert env.unwrapped._game_mode == 4 and env.unwrapped._game_difficulty == 1
    env.step(1)
    envs = make_vector_env(BREAKOUT, 2, shifts=[("mode", "4")])
    assert envs.reset(seed=0)[0]["image"].shape == (2, 1, 84, 84)
    envs.close()
    with pytest.raises(ShiftError, match="has no mode 3; its modes: \\[0, 4"):
        make_env(BREAKOUT, shifts=[("mode", "3")])
    with pytest.raises(ShiftError, match="sticky takes a probability"):
        make_env(BREAKOUT, shifts=[("sticky", "2")])


def test_clipped_rewards_and_lives_as_value_cuts():
    envs = make_vector_env(BREAKOUT, 2, env_kwargs={"frame_stack": 1})
    spec = PolicySpec(core="lstm", hidden_size=8, num_units=2, feature_size=32)
    policy = ActorCritic(envs.single_observation_space, 4, spec)
    storage = RolloutStorage(120, 2, envs.single_observation_space, policy.initial_state(2), 120,
                             torch.device("cpu"))  # fmt: skip
    collector = RolloutCollector(envs, policy, storage, torch.device("cpu"), seed=1,
                                 clip_rewards=True, episodic_life=True)  # fmt: skip
    _, stats = collector.collect()
    envs.close()
    assert set(storage.rewards.unique().tolist()) <= {-1.0, 0.0, 1.0}
    cuts = storage.terminated & ~storage.episode_starts.roll(-1, dims=0)
    assert cuts[:-1].any()  # a lost life: the value target ends, the next step is no new episode
    assert storage.ended[storage.terminated].all()


def test_atari_preset_and_spatial_validation():
    config = resolve_config({"env": BREAKOUT})
    assert (config.clip_coef, config.learning_rate, config.num_envs) == (0.1, 2.5e-4, 8)
    assert config.clip_rewards and config.episodic_life and config.feature_size == 512
    assert config.env_kwargs() == {
        "frame_stack": 1,
        "repeat_action_probability": 0.25,
        "full_action_space": False,
        "max_episode_frames": 108_000,
    }
    assert resolve_config({"env": BREAKOUT, "clip_coef": 0.2}).clip_coef == 0.2
    assert exit_code(["train", "--env", BREAKOUT, "--core", "lstm", "--rims-spatial"]) == 2


ATARI_TINY = [
    "--env", BREAKOUT, "--total-steps", "64", "--num-envs", "2", "--num-steps", "16",
    "--num-minibatches", "1", "--update-epochs", "1", "--hidden-size", "8", "--num-units", "3",
    "--k", "2", "--feature-size", "64", "--no-progress", "--frame-stack", "2",
    "--max-episode-frames", "800",  # an untrained agent may never press FIRE again
]  # fmt: skip


@pytest.mark.parametrize(
    "extra", [["--core", "rims"], ["--core", "lstm"], ["--core", "rims", "--rims-spatial"],
              ["--core", "gru", "--encoder", "impala"],
              ["--core", "rims", "--rims-spatial", "--centre-features"]]
)  # fmt: skip
def test_cpu_smoke_training_and_evaluation(tmp_path, extra, capsys):
    run = tmp_path / "run"
    assert main(["train", *ATARI_TINY, *extra, "--run-dir", str(run)]) == 0
    assert "trained to step 64" in capsys.readouterr().out
    assert main(["eval", str(run), "--episodes", "1", "--shift", "sticky=0"]) == 0
    assert "sticky=0" in capsys.readouterr().out


def test_an_atari_mixture_plays_each_env_in_its_drawn_member(tmp_path, capsys):
    # ALE's C++ vector env plays one setting: a mixture is single flavoured envs in a vector
    # env. With flicker=1 every frame is blank, with flicker=0 none is, so the frames show
    # which member each env is playing; it keeps it for the whole episode.
    envs = make_vector_env(PONG, 6, shifts=[("flicker", "0,1")])
    try:
        obs, _ = envs.reset(seed=3)
        blank = [bool((image == 0).all()) for image in obs["image"]]
        assert any(blank) and not all(blank)
        for _ in range(5):
            obs, *_ = envs.step(np.zeros(6, dtype=int))
            assert [bool((image == 0).all()) for image in obs["image"]] == blank
    finally:
        envs.close()
    run = tmp_path / "mixed"
    argv = ["train", *ATARI_TINY, "--shift", "flicker=0,1", "--run-dir", str(run)]
    assert main(argv) == 0 and "trained to step 64" in capsys.readouterr().out
    assert main(["eval", str(run), "--episodes", "2"]) == 0
    assert "flicker=0,1" in capsys.readouterr().out


def test_seeds_past_a_c_int_are_folded_for_the_fast_path():
    # AtariVectorEnv takes C int seeds; a resumed run reseeds with seed + 1_000_003 * update.
    assert fold_seed(5, 8) == 5 and fold_seed(2**31 - 8 + 5, 8) == 5
    assert all(fold_seed(s, 8) + 7 < 2**31 for s in (2**31 - 8, 2**31, 3 * 10**9, 10**15))
    envs = make_vector_env(BREAKOUT, 2)
    try:
        small, _ = envs.reset(seed=5)
        big, _ = envs.reset(seed=2**31 - 2 + 5)  # folds to 5
        assert np.array_equal(small["image"], big["image"])
        envs.reset(seed=3_000_000_000)
    finally:
        envs.close()


def test_atari_run_resumes_past_two_thousand_updates(tmp_path, capsys):
    # A checkpoint of update 3,000 (the preset's 1,024 steps an update: 3M steps), made cheaply:
    # one update trained, its counters moved on. Resuming reseeds the envs past 2**31.
    run = tmp_path / "run"
    tiny = [*ATARI_TINY, "--run-dir", str(run), "--num-steps", "8"]
    tiny[tiny.index("--total-steps") + 1] = "16"
    assert main(["train", *tiny]) == 0
    path = run / "checkpoints" / "latest.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["update"], checkpoint["global_step"] = 3_000, 48_000
    torch.save(checkpoint, path)
    assert main(["train", "--resume", "--run-dir", str(run), "--total-steps", "48016"]) == 0
    assert "trained to step 48,016" in capsys.readouterr().out


def test_flicker_and_noise_change_only_the_pixels():
    settings = dict(frame_stack=1, noop_max=0, repeat_action_probability=0.0)
    clean = make_vector_env(PONG, 2, env_kwargs=settings)
    same = make_vector_env(PONG, 2, env_kwargs=settings, shifts=[("flicker", "0"), ("noise", "0")])
    dark = make_vector_env(PONG, 2, env_kwargs=settings, shifts=[("flicker", "1")])
    noisy = make_vector_env(PONG, 2, env_kwargs=settings, shifts=[("noise", "0.1")])
    outs = [env.reset(seed=3)[0]["image"] for env in (clean, same, dark, noisy)]
    for _ in range(20):
        steps = [env.step(np.array([2, 3])) for env in (clean, same, dark, noisy)]
        outs = [s[0]["image"] for s in steps]
        rewards = [s[1] for s in steps]
        assert all(np.array_equal(rewards[0], r) for r in rewards)  # the game is unchanged
    assert np.array_equal(outs[0], outs[1])  # flicker=0 and noise=0 are the identity
    assert outs[2].max() == 0  # flicker=1 blanks every frame
    diff = outs[3].astype(int) - outs[0].astype(int)
    assert 15 < diff.std() < 35 and np.abs(diff).max() > 0  # ~0.1 x 255, clipped at the ends
    for env in (clean, same, dark, noisy):
        env.close()


def test_atari_suites_follow_the_runs_game():
    from envs.suites import atari_modes_suite, load_suite, resolve_rows

    rows = resolve_rows(load_suite("atari-perturb"), [PONG, PONG])
    assert {r.env for r in rows} == {PONG} and rows[3].label == "flicker=0.25"
    with pytest.raises(ShiftError, match="they differ"):
        resolve_rows(load_suite("atari-perturb"), [PONG, BREAKOUT])
    modes = atari_modes_suite(BREAKOUT)
    assert len(modes.rows) == 12 * 2 and modes.rows[1].label == "mode=0 difficulty=1"
    with pytest.raises(ShiftError, match="needs Atari runs"):
        atari_modes_suite("MiniGrid-DoorKey-5x5-v0")


def test_eval_atari_modes_and_rows_that_do_not_fit(tmp_path, capsys):
    from agents.checkpoint import load_policy
    from agents.report import compatible_rows
    from envs.factory import EnvError
    from envs.suites import SuiteRow

    run = tmp_path / "run"
    assert main(["train", *ATARI_TINY, "--env", PONG, "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--suite", "atari-modes", "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "mode=0 difficulty=0" in out and "mode=1 difficulty=3" in out
    # A row whose action set differs (Breakout has 4 actions, Pong 6) is left out, with a line.
    loaded = load_policy(run)
    rows = [SuiteRow(PONG), SuiteRow(BREAKOUT)]
    assert compatible_rows([loaded], rows) == rows[:1]
    assert "skipped ALE/Breakout-v5" in capsys.readouterr().out
    with pytest.raises(EnvError, match="no row of the suite fits"):
        compatible_rows([loaded], rows[1:])


def test_spatial_rims_show_where_they_look(tmp_path):
    from tests.test_record import assert_attention_maps_shown

    run = tmp_path / "run"
    assert main(["train", *ATARI_TINY, "--rims-spatial", "--image-every", "1",
                 "--run-dir", str(run)]) == 0  # fmt: skip
    assert_attention_maps_shown(run, BREAKOUT)  # the Nature CNN's 7x7 positions


@pytest.mark.parametrize("shifts", [(), (("mode", "0"),)])  # the fast path, the flavoured one
def test_rims_mechanisms_on_atari_report_the_lives_left_and_the_ball(tmp_path, shifts):
    run = tmp_path / "run"
    assert main(["train", *ATARI_TINY, "--core", "rims", "--run-dir", str(run)]) == 0
    report = inspect_mechanisms(load_policy(run), SuiteRow(BREAKOUT, shifts), episodes=1,
                                num_envs=1)  # fmt: skip
    features = {feature.name: feature for feature in report.features}
    lives = features["lives"]
    # every step says how many of Breakout's five lives are left, the first steps all five
    assert sum(lives.steps) == report.steps and "5" in lives.values
    assert set(lives.values) <= {"1", "2", "3", "4", "5"}
    # Every step places the ball (read from RAM: single envs even where training used ALE's
    # vector env); an untrained agent misses it.
    ball, side, moving = (features[name] for name in BALL_FEATURES)
    assert sum(ball.steps) == sum(side.steps) == sum(moving.steps) == report.steps
    assert set(ball.values) <= {"near the bricks", "mid-field", "near the paddle", "not in play"}
    assert {"mid-field", "not in play"} <= set(ball.values)
    assert set(side.values) <= {"left of it", "over it", "right of it", "not in play"}
    # The ball falls from each serve; its way is unknown on the serve's first step (the step
    # before had no ball in play).
    assert {"down", "not in play", "unknown"} <= set(moving.values)
    assert set(moving.values) <= {"up", "down", "not in play", "unknown"}


@pytest.mark.parametrize(
    "game, now, before, expected",
    [  # the paddle spans 40-55 in Breakout (columns), 60-75 in Pong (rows)
        ("breakout", (50.0, 170.5), (48.0, 166.5), ("near the paddle", "over it", "down")),
        ("breakout", (30.0, 80.5), (32.0, 84.5), ("near the bricks", "left of it", "up")),
        ("breakout", (60.0, 120.0), None, ("mid-field", "right of it", "unknown")),
        ("pong", (100.5, 50.5), (96.5, 52.5), ("our half", "above it", "toward us")),
        ("pong", (20.5, 70.5), (24.5, 70.5), ("their half", "level with it", "away")),
        ("pong", (20.5, 90.5), (20.5, 86.5), ("their half", "below it", "unknown")),
        ("pong", None, (20.5, 70.5), ("not in play",) * 3),
    ],
)  # fmt: skip
def test_ball_situation_places_the_ball_against_the_paddle(game, now, before, expected):
    paddle = (40, 55) if game == "breakout" else (60, 75)
    then = None if before is None else atari_ram.Scene(game, before, paddle)
    situation = ball_situation(atari_ram.Scene(game, now, paddle), then)
    assert situation == dict(zip(BALL_FEATURES, expected))


# Each game's ball and paddle colours; the rows where the ball is told apart from the rest (not
# among Breakout's bricks or beside its paddle); the columns where our paddle is alone.
SCREENS = {
    "breakout": ((200, 72, 72), (200, 72, 72), slice(94, 188), (slice(189, 194), slice(8, 152))),
    "pong": ((236, 236, 236), (92, 186, 92), slice(34, 194), (slice(34, 194), slice(140, 144))),
}


@pytest.mark.parametrize("game", ["breakout", "pong"])
def test_ram_scene_is_where_the_screen_shows_the_ball_and_paddle(game):
    """AtariARI's addresses and the offsets to pixels, against rendered frames: random play,
    one emulator frame a step, FIRE now and then to serve."""
    ball_colour, paddle_colour, ball_rows, (paddle_rows, paddle_cols) = SCREENS[game]
    env = gym.make(f"ALE/{game.capitalize()}-v5", frameskip=1, repeat_action_probability=0.0)
    env.reset(seed=0)
    ale, rng = env.unwrapped.ale, np.random.default_rng(0)
    balls = paddles = 0
    for t in range(1500):
        action = 1 if t % 100 == 0 else int(rng.integers(env.action_space.n))
        frame, _, terminated, truncated, _ = env.step(action)
        seen = atari_ram.scene(game, ale.getRAM())
        ys, xs = np.nonzero(np.all(frame[ball_rows] == ball_colour, axis=-1))
        if seen.ball is not None:
            x, y = seen.ball
            if len(xs) and ball_rows.start + 2 <= y <= ball_rows.stop - 2:
                balls += 1  # the ball's pixels centre on the RAM's ball, to a pixel
                assert abs(xs.mean() - x) <= 1.0 and abs(ys.mean() + ball_rows.start - y) <= 1.5
        elif game == "pong":  # not served, or past a paddle: no ball between the paddles
            low, high = atari_ram.PONG_BETWEEN
            assert not len(xs) or not low <= xs.mean() <= high
        rows, cols = np.nonzero(np.all(frame[paddle_rows, paddle_cols] == paddle_colour, axis=-1))
        first, last = seen.paddle
        inside = paddle_cols if game == "breakout" else paddle_rows
        # Not drawn (Pong's first frames), partly behind Breakout's walls (red there too) or
        # cut by Pong's field: not compared.
        whole = len(rows) > 0 and inside.start <= first and last < inside.stop
        if whole and game == "breakout":  # the paddle's columns, exactly (at full width, 16)
            runs = np.split(np.unique(cols), np.flatnonzero(np.diff(np.unique(cols)) > 1) + 1)
            widest = max(runs, key=len) + paddle_cols.start  # not the 2 of a ball passing by
            assert (widest[0], widest[-1]) == (first, last)
            paddles += 1
        elif whole:
            top, bottom = rows.min() + paddle_rows.start, rows.max() + paddle_rows.start
            assert 0 <= bottom - last <= 1 and 0 <= top - first <= 1  # drawn a row lower at times
            paddles += 1
        if terminated or truncated:
            env.reset()
    env.close()
    assert balls > 500 and paddles > 500
