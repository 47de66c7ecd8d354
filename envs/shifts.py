"""Named out-of-distribution shifts, given as ``KEY=VALUE`` and composable.

Each shift is an env constructor argument or a Gymnasium wrapper, and changes one thing:

Minigrid
    ``size=N``         the same task family on an N x N grid (``max_steps`` follows the env's own
                       rule, e.g. 10 x N^2 for DoorKey); the observation is still the agent's view.
    ``distractors=N``  N objects, the goal's among them (Fetch, GoToObject, PutNear:
                       ``numObjs``), or N obstacles (Dynamic-Obstacles: ``n_obstacles``). A count
                       the level generator cannot place fails at reset, where
                       ``envs.factory.probe_resets`` reports it (as an even size for Memory).
    ``colors=permute`` the agent sees every object colour consistently renamed by a fixed
                       derangement of Minigrid's six colours (red->green->blue->purple->yellow->
                       grey->red), in the view and in the mission's words where the policy reads
                       them (``--mission``); objects, states and rendering are unchanged.
    ``noise=P``        each cell of the symbolic view is replaced, with probability P, by a random
                       valid (object, colour, state) triple; P=0 is the identity.
    ``view=N``         the agent's view is N x N (odd, >= 3); only a policy whose encoder accepts
                       that view size can be evaluated on it.
    ``max_steps=N``    an episode is cut (truncated) after N steps, whatever the grid's size
                       (Minigrid's ``max_steps``); the reward for success, 1 - 0.9 t / N, follows.
    ``sides=fixed``    Memory: the key is always at the upper end of the split and the ball at
                       the lower (the cue is still drawn), so the cue alone names the side; the
                       task without its exclusive-or. ``sides=random`` is the env's own draw.
    ``start_dir=D``    every episode starts with the agent facing D (Minigrid's ``agent_dir``:
                       0 east, 1 south, 2 west, 3 north) where the level put it, in place of the
                       direction the level drew or fixed; ``start_dir=0,2`` draws one of the two.

Atari
    ``mode=M``, ``difficulty=D``  an ALE game flavour (Machado et al., 2018); the flavoured path
                       is used. A mode that changes the action set needs a policy trained with
                       ``--full-action-space``; otherwise the action count differs and evaluation
                       refuses with one line.
    ``sticky=P``       the probability that the previous action is repeated (v5 default 0.25).
    ``frameskip=N``    emulator frames per agent step (default 4).
    ``flicker=P``      each observation's newest frame is blanked with probability P
                       (Flickering Atari, Hausknecht & Stone 2015); ``flicker=0`` is the identity.
    ``noise=SIGMA``    Gaussian pixel noise of std SIGMA x 255, clipped to 0..255.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

from envs.mission import color_word_permutation


class ShiftError(ValueError):
    """An unknown shift, a bad value, or a shift that does not apply to the env."""


Wrapper = Callable[[gym.Env], gym.Env]


@dataclass
class ShiftEffect:
    """What a set of shifts does to an env: constructor kwargs and wrappers (applied in order)."""

    env_kwargs: dict[str, Any] = field(default_factory=dict)
    wrappers: list[Wrapper] = field(default_factory=list)


def parse_shift(text: str) -> tuple[str, str]:
    """``"size=8"`` -> ``("size", "8")``."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ShiftError(f"a shift is KEY=VALUE, got {text!r}; valid keys: {', '.join(SHIFTS)}")
    return key.strip(), value.strip()


def shift_label(shifts: Sequence[tuple[str, str]]) -> str:
    """``[("size", "8"), ("noise", "0.1")]`` -> ``"size=8 noise=0.1"`` (``""`` for none)."""
    return " ".join(f"{k}={v}" for k, v in shifts)


def _int_at_least(key: str, low: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = low - 1
        if number < low:
            raise ShiftError(f"shift {key} takes an integer >= {low}, got {value!r}")
        return number

    return parse


def _probability(key: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not 0.0 <= number <= 1.0:
            raise ShiftError(f"shift {key} takes a probability in [0, 1], got {value!r}")
        return number

    return parse


def _env_creator(env_id: str) -> Callable[..., gym.Env]:
    """The class (or function) the env id is registered to build."""
    return load_env_creator(gym.spec(env_id).entry_point)


def _constructor_args(env_id: str) -> set[str]:
    """Names the env's constructor takes (beyond ``**kwargs`` passed to MiniGridEnv)."""
    creator = _env_creator(env_id)
    target = creator.__init__ if inspect.isclass(creator) else creator
    return set(inspect.signature(target).parameters)


# --- Minigrid wrappers ----------------------------------------------------------------------


COLOR_PERMUTATION = np.roll(np.arange(len(COLOR_TO_IDX)), -1)  # colour c is seen as c + 1 mod 6
COLOR_WORD_PERMUTATION = color_word_permutation(COLOR_PERMUTATION)  # the mission's words alike


class PermuteColors(gym.ObservationWrapper):
    """Rename every colour index in the symbolic view by ``COLOR_PERMUTATION``, and the colour
    words of the mission (where the policy reads it) the same way."""

    def observation(self, observation: dict) -> dict:
        image = observation["image"].copy()
        image[..., 1] = COLOR_PERMUTATION[image[..., 1]]
        renamed = {**observation, "image": image}
        if "mission" in observation:
            renamed["mission"] = COLOR_WORD_PERMUTATION[observation["mission"]]
        return renamed


class CellNoise(gym.ObservationWrapper):
    """Replace each view cell, with probability ``p``, by a random valid symbolic triple."""

    def __init__(self, env: gym.Env, p: float) -> None:
        super().__init__(env)
        self.p = p
        self.sizes = np.array([len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX)])
        self.rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        # Its own generator: the noise must not shift the env's layout random stream.
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        return super().reset(seed=seed, options=options)

    def observation(self, observation: dict) -> dict:
        if self.p == 0.0:
            return observation
        image = observation["image"].copy()
        rng = self.rng
        hit = rng.random(image.shape[:2]) < self.p  # (view, view)
        random_cells = (rng.random((*image.shape[:2], 3)) * self.sizes).astype(image.dtype)
        image[hit] = random_cells[hit]
        return {**observation, "image": image}


class LevelEdit(gym.Wrapper):
    """Changes every Minigrid level once it is generated (``edit``), before the first
    observation is built from it, so that observation comes through every wrapper as usual."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        grid_env = env.unwrapped
        generate = grid_env._gen_grid

        def generate_and_edit(width: int, height: int) -> None:
            generate(width, height)
            self.edit(grid_env, height)

        grid_env._gen_grid = generate_and_edit

    def edit(self, grid_env: Any, height: int) -> None:
        raise NotImplementedError


class StartFacing(LevelEdit):
    """The agent is turned to ``direction`` (Minigrid's ``agent_dir``) where the level put it;
    nothing else about the level changes."""

    def __init__(self, env: gym.Env, direction: int) -> None:
        self.direction = direction
        super().__init__(env)

    def edit(self, grid_env: Any, height: int) -> None:
        grid_env.agent_dir = self.direction


class FixedSides(LevelEdit):
    """Memory: the key is always at the upper end of the split and the ball at the lower (the
    start room's cue is still drawn), so the side to choose follows the cue alone."""

    def edit(self, grid_env: Any, height: int) -> None:
        x = grid_env.success_pos[0]  # both ends of the split are in this column
        upper, lower = (x, height // 2 - 2), (x, height // 2 + 2)
        top, bottom = grid_env.grid.get(*upper), grid_env.grid.get(*lower)
        if top.type != "key":
            grid_env.grid.set(*upper, bottom)
            grid_env.grid.set(*lower, top)
            grid_env.success_pos, grid_env.failure_pos = grid_env.failure_pos, grid_env.success_pos


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShiftKind:
    key: str
    families: tuple[str, ...]
    help: str
    apply: Callable[[str, str, ShiftEffect], None]  # (env_id, value, effect) -> fills effect


def _apply_size(env_id: str, value: str, effect: ShiftEffect) -> None:
    size = _int_at_least("size", 5)(value)
    if "size" not in _constructor_args(env_id):
        raise ShiftError(f"shift size does not apply to {env_id} (it has no size argument)")
    effect.env_kwargs["size"] = size


def _apply_distractors(env_id: str, value: str, effect: ShiftEffect) -> None:
    count = _int_at_least("distractors", 0)(value)
    names = [n for n in ("numObjs", "n_obstacles") if n in _constructor_args(env_id)]
    if not names:
        raise ShiftError(f"shift distractors does not apply to {env_id} (it has no distractors)")
    effect.env_kwargs[names[0]] = count


def _apply_colors(env_id: str, value: str, effect: ShiftEffect) -> None:
    if value != "permute":
        raise ShiftError(f"shift colors takes 'permute', got {value!r}")
    effect.wrappers.append(PermuteColors)


def _apply_noise(env_id: str, value: str, effect: ShiftEffect) -> None:
    p = _probability("noise")(value)
    if env_id.startswith("ALE/"):
        effect.env_kwargs["noise"] = p  # Gaussian pixel noise, std as a fraction of 255
    else:
        effect.wrappers.append(lambda env: CellNoise(env, p))


def _apply_flicker(env_id: str, value: str, effect: ShiftEffect) -> None:
    effect.env_kwargs["flicker"] = _probability("flicker")(value)


def _apply_view(env_id: str, value: str, effect: ShiftEffect) -> None:
    view = _int_at_least("view", 3)(value)
    if view % 2 == 0:
        raise ShiftError(f"shift view takes an odd integer >= 3, got {value!r}")
    effect.env_kwargs["agent_view_size"] = view  # Minigrid sizes the image space from it


def _apply_max_steps(env_id: str, value: str, effect: ShiftEffect) -> None:
    steps = _int_at_least("max_steps", 1)(value)
    if "max_steps" not in _constructor_args(env_id):
        raise ShiftError(f"shift max_steps does not apply to {env_id} (it sets its own limit)")
    effect.env_kwargs["max_steps"] = steps


def _apply_start_dir(env_id: str, value: str, effect: ShiftEffect) -> None:
    if value not in ("0", "1", "2", "3"):
        raise ShiftError(f"shift start_dir takes 0 (east), 1 (south), 2 (west) or 3 (north), "
                         f"got {value!r}")  # fmt: skip
    direction = int(value)
    effect.wrappers.append(lambda env: StartFacing(env, direction))


def _apply_sides(env_id: str, value: str, effect: ShiftEffect) -> None:
    from minigrid.envs import MemoryEnv

    creator = _env_creator(env_id)
    if not (inspect.isclass(creator) and issubclass(creator, MemoryEnv)):
        raise ShiftError(f"shift sides applies to the Memory envs only, not {env_id}")
    if value not in ("fixed", "random"):
        raise ShiftError(f"shift sides takes 'fixed' or 'random', got {value!r}")
    if value == "fixed":
        effect.wrappers.append(FixedSides)


def _atari_flavour(env_id: str, key: str, values: list[int]) -> None:
    from envs.atari import available_flavours

    if key not in ("mode", "difficulty"):
        return
    available = available_flavours(env_id)[key]
    bad = [v for v in values if v not in available]
    if bad:
        raise ShiftError(f"{env_id} has no {key} {bad[0]}; its {key}s: {available}")


def _apply_mode(env_id: str, value: str, effect: ShiftEffect) -> None:
    mode = _int_at_least("mode", 0)(value)
    _atari_flavour(env_id, "mode", [mode])
    effect.env_kwargs["mode"] = mode


def _apply_difficulty(env_id: str, value: str, effect: ShiftEffect) -> None:
    difficulty = _int_at_least("difficulty", 0)(value)
    _atari_flavour(env_id, "difficulty", [difficulty])
    effect.env_kwargs["difficulty"] = difficulty


def _apply_sticky(env_id: str, value: str, effect: ShiftEffect) -> None:
    effect.env_kwargs["repeat_action_probability"] = _probability("sticky")(value)


def _apply_frameskip(env_id: str, value: str, effect: ShiftEffect) -> None:
    effect.env_kwargs["frameskip"] = _int_at_least("frameskip", 1)(value)


SHIFTS: dict[str, ShiftKind] = {
    kind.key: kind
    for kind in (
        ShiftKind("size", ("minigrid",), "grid size N x N", _apply_size),
        ShiftKind(
            "distractors", ("minigrid",), "number of objects or obstacles", _apply_distractors
        ),
        ShiftKind("colors", ("minigrid",), "'permute': rename object colours", _apply_colors),
        ShiftKind(
            "noise",
            ("minigrid", "atari"),
            "Minigrid: probability of a random view cell; Atari: pixel noise std (fraction of 255)",
            _apply_noise,
        ),
        ShiftKind("view", ("minigrid",), "agent view size (odd)", _apply_view),
        ShiftKind("max_steps", ("minigrid",), "steps before an episode is cut", _apply_max_steps),
        ShiftKind(
            "sides", ("minigrid",), "Memory: 'fixed' (key up, ball down) or 'random'", _apply_sides
        ),
        ShiftKind(
            "start_dir", ("minigrid",), "direction the agent faces at the start", _apply_start_dir
        ),
        ShiftKind("mode", ("atari",), "ALE game mode", _apply_mode),
        ShiftKind("difficulty", ("atari",), "ALE game difficulty", _apply_difficulty),
        ShiftKind("sticky", ("atari",), "repeat-action probability", _apply_sticky),
        ShiftKind("frameskip", ("atari",), "emulator frames per agent step", _apply_frameskip),
        ShiftKind("flicker", ("atari",), "probability a frame is blanked", _apply_flicker),
    )
}


def shift_effect(env_id: str, family: str, shifts: Sequence[tuple[str, str]]) -> ShiftEffect:
    """Validate ``shifts`` for ``env_id`` and collect what they do; ``ShiftError`` if not."""
    effect = ShiftEffect()
    seen = set()
    for key, value in shifts:
        kind = SHIFTS.get(key)
        if kind is None:
            raise ShiftError(f"unknown shift {key!r}; valid keys: {', '.join(SHIFTS)}")
        if key in seen:
            raise ShiftError(f"shift {key} is given twice")
        seen.add(key)
        if family not in kind.families:
            valid = [k for k, s in SHIFTS.items() if family in s.families]
            raise ShiftError(
                f"shift {key} does not apply to {env_id}; valid keys for it: "
                f"{', '.join(valid) if valid else 'none'}"
            )
        kind.apply(env_id, value, effect)
    return effect
