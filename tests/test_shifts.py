"""Each shift changes what it claims and nothing else; suites parse; bad shifts are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envs.factory import make_env, probe_resets
from envs.shifts import COLOR_PERMUTATION, ShiftError, parse_shift
from envs.suites import builtin_suites, load_suite, resolve_rows

DOORKEY = "MiniGrid-DoorKey-5x5-v0"


def first_obs(env_id=DOORKEY, shifts=(), seed=3):
    env = make_env(env_id, shifts=shifts)
    obs, _ = env.reset(seed=seed)
    return env, obs


def test_size_changes_the_grid_not_the_observation():
    base, obs = first_obs()
    big, big_obs = first_obs(shifts=[("size", "8")])
    assert (base.unwrapped.width, big.unwrapped.width) == (5, 8)
    assert big.unwrapped.max_steps == 10 * 8 * 8  # DoorKey's own rule follows the size
    assert big_obs["image"].shape == obs["image"].shape == (7, 7, 3)
    assert big.observation_space == base.observation_space


def test_color_permutation_renames_colours_only():
    _, obs = first_obs()
    _, shifted = first_obs(shifts=[("colors", "permute")])
    image, moved = obs["image"], shifted["image"]
    assert np.array_equal(moved[..., 0], image[..., 0])  # objects unchanged
    assert np.array_equal(moved[..., 2], image[..., 2])  # states unchanged
    assert np.array_equal(moved[..., 1], COLOR_PERMUTATION[image[..., 1]])
    assert (COLOR_PERMUTATION != np.arange(len(COLOR_PERMUTATION))).all()  # a derangement


def test_noise_zero_is_the_identity_and_noise_corrupts_cells_validly():
    env, obs = first_obs()
    _, same = first_obs(shifts=[("noise", "0")])
    assert np.array_equal(obs["image"], same["image"])
    noisy_env = make_env(DOORKEY, shifts=[("noise", "0.5")])
    noisy_env.reset(seed=3)
    env.reset(seed=3)
    changed = []
    for _ in range(20):
        a, *_ = env.step(2)
        b, *_ = noisy_env.step(2)
        changed.append((a["image"] != b["image"]).any(-1).mean())
        assert (b["image"][..., 0] < 11).all() and (b["image"][..., 1] < 6).all()
        assert (b["image"][..., 2] < 3).all()
    assert 0.2 < np.mean(changed) < 0.6  # ~0.5 of cells hit, some redrawn to the same value
    # The noise has its own generator: the layout of later episodes is unchanged.
    assert np.array_equal(noisy_env.unwrapped.grid.encode(), env.unwrapped.grid.encode())


def test_view_changes_the_view_size():
    _, obs = first_obs(shifts=[("view", "9")])
    assert obs["image"].shape == (9, 9, 3)


def test_max_steps_cuts_episodes_whatever_the_size():
    env, _ = first_obs(shifts=[("size", "16"), ("max_steps", "20")])
    assert env.unwrapped.max_steps == 20  # not DoorKey's 10 x 16^2
    for step in range(1, 21):
        _, reward, terminated, truncated, _ = env.step(0)  # turning in place never succeeds
        assert not terminated and truncated == (step == 20) and reward == 0
    # Success pays 1 - 0.9 t / N: the same path is worth less under a shorter limit.
    assert env.unwrapped._reward() == pytest.approx(1 - 0.9 * 20 / 20)
    with pytest.raises(ShiftError, match="max_steps does not apply to MiniGrid-ObstructedMaze"):
        make_env("MiniGrid-ObstructedMaze-1Dl-v0", shifts=[("max_steps", "50")])


def test_start_dir_turns_the_agent_where_the_level_put_it():
    memory = "MiniGrid-MemoryS7-v0"  # the level always faces the agent east (0)
    plain = make_env(memory)
    for seed in range(4):
        env, obs = first_obs(memory, shifts=[("start_dir", "2"), ("noise", "0")], seed=seed)
        assert obs["direction"] == env.unwrapped.agent_dir == 2
        # The same level and place as turning twice from the usual start: the first view is
        # the one that way (the cue of the start room is then in front).
        plain.reset(seed=seed)
        turned, *_ = plain.step(0)
        turned, *_ = plain.step(0)
        assert tuple(env.unwrapped.agent_pos) == tuple(plain.unwrapped.agent_pos)
        assert np.array_equal(obs["image"], turned["image"])
    # DoorKey draws the direction; the shift fixes it, and a list of values draws among them.
    assert {
        int(first_obs(shifts=[("start_dir", "3")], seed=s)[1]["direction"]) for s in range(8)
    } == {3}
    mixed = make_env(memory, shifts=[("start_dir", "0,2")])
    assert {int(mixed.reset(seed=s)[0]["direction"]) for s in range(16)} == {0, 2}
    with pytest.raises(ShiftError, match="start_dir takes 0 .east., 1 .south., 2 .west. or 3"):
        make_env(memory, shifts=[("start_dir", "4")])
    with pytest.raises(ShiftError, match="start_dir takes 0 .east."):
        make_env(memory, shifts=[("start_dir", "north")])


def test_sides_fixed_puts_the_key_up_and_pays_for_the_cue_alone():
    memory = "MiniGrid-MemoryS7-v0"
    cues = set()
    for seed in range(12):
        env, _ = first_obs(memory, shifts=[("sides", "fixed")], seed=seed)
        grid_env = env.unwrapped
        cue = grid_env.grid.get(1, 2).type  # the start room's object
        assert (grid_env.grid.get(5, 1).type, grid_env.grid.get(5, 5).type) == ("key", "ball")
        # From the split, facing north: a step up ends the episode, paid iff the cue is the key.
        grid_env.agent_pos, grid_env.agent_dir = np.array((5, 3)), 3
        _, reward, terminated, _, _ = env.step(2)
        assert terminated and (reward > 0) == (cue == "key")
        cues.add(cue)
    assert cues == {"key", "ball"}  # the cue is still drawn
    # random is the env's own draw: both orders occur.
    orders = {
        first_obs(memory, shifts=[("sides", "random")], seed=s)[0].unwrapped.grid.get(5, 1).type
        for s in range(12)
    }
    assert orders == {"key", "ball"}
    with pytest.raises(ShiftError, match="sides applies to the Memory envs only"):
        make_env(DOORKEY, shifts=[("sides", "fixed")])


def test_distractors_where_the_family_has_them():
    env, _ = first_obs("MiniGrid-Fetch-5x5-N2-v0", shifts=[("distractors", "4")])
    objects = [o for o in env.unwrapped.grid.grid if o is not None and o.type in ("key", "ball")]
    assert len(objects) == 4
    with pytest.raises(ShiftError, match="distractors does not apply to MiniGrid-DoorKey"):
        make_env(DOORKEY, shifts=[("distractors", "2")])


@pytest.mark.parametrize(
    "shift, message",
    [
        (("speed", "2"), "unknown shift 'speed'; valid keys: size, distractors, colors, noise"),
        (("size", "x"), "size takes an integer >= 5"),
        (("size", "3"), "size takes an integer >= 5"),
        (("noise", "1.5"), "noise takes a probability in [0, 1]"),
        (("colors", "invert"), "colors takes 'permute'"),
        (("view", "4"), "view takes an odd integer"),
        (("max_steps", "0"), "max_steps takes an integer >= 1"),
    ],
)
def test_bad_shifts_are_clear(shift, message):
    with pytest.raises(ShiftError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_env(DOORKEY, shifts=[shift])


def test_shifts_do_not_apply_to_other_families():
    with pytest.raises(ShiftError, match="does not apply to CartPole-v1; valid keys for it: none"):
        make_env("CartPole-v1", shifts=[("size", "8")])
    with pytest.raises(ShiftError, match="a shift is KEY=VALUE"):
        parse_shift("size8")


def test_builtin_and_user_suites(tmp_path):
    suites = builtin_suites()
    doorkey = suites["doorkey"]
    assert [r.label for r in doorkey.rows] == ["", "size=6", "size=8", "size=16"]
    assert {"doorkey", "empty"} <= set(suites)
    # Every built-in row builds, and makes its levels (an even size for Memory would not);
    # $RUN rows for an Atari run.
    for suite in suites.values():
        for row in resolve_rows(suite, ["ALE/Pong-v5"]):
            probe_resets(row.env, row.shifts)
    with pytest.raises(ShiftError, match="they differ"):
        resolve_rows(suites["atari-perturb"], ["ALE/Pong-v5", "ALE/Breakout-v5"])
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"mine": {"rows": [{"env": DOORKEY, "shifts": ["noise=0.1"]}]}}))
    assert load_suite(str(path)).rows[0].shifts == (("noise", "0.1"),)
    path.write_text(
        json.dumps({"a": {"rows": [{"env": DOORKEY}]}, "b": {"rows": [{"env": DOORKEY}]}})
    )
    assert load_suite(f"{path}:b").name == "b"
    with pytest.raises(ShiftError, match="holds several suites"):
        load_suite(str(path))
    with pytest.raises(ShiftError, match="unknown suite 'nope'; built-in suites: doorkey"):
        load_suite("nope")
    path.write_text("{not json")
    with pytest.raises(ShiftError, match="not valid JSON"):
        load_suite(str(path))
    path.write_bytes(b"\x89PNG\r\n")  # a plot given where the suite was meant
    with pytest.raises(ShiftError, match="not valid JSON"):
        load_suite(str(path))
    path.write_text(json.dumps({"x": {"rows": [{"shifts": []}]}}))
    with pytest.raises(ShiftError, match="each row needs an 'env' id"):
        load_suite(str(path))
