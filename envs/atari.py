"""Atari (ALE) environments with one observation contract and two ways to build them.

Observation: ``{"image": uint8 (frame_stack, 84, 84)}``, grey, the max of the last two emulator
frames of each agent step. One agent step is ``frameskip`` (default 4) emulator frames.

1. **Fast**: ``ale_py.vector_env.AtariVectorEnv`` (C++ threads, preprocessing built in: noop reset,
   frameskip with max-pool, fire reset, resize). Used for training and evaluation when no game
   flavour is asked for.
2. **Flavoured**: ``gymnasium.make("ALE/...", mode=, difficulty=, repeat_action_probability=,
   full_action_space=, frameskip=1)`` + SB3's ``FireResetEnv`` + Gymnasium's
   ``AtariPreprocessing`` + ``FrameStackObservation``, in a Gymnasium vector env. Used whenever a
   ``mode`` or ``difficulty`` is set (the fast path has none), and for single envs (recording).

Both paths take the same ``AtariSettings`` and produce the same observations (a test compares
them with noops and sticky actions off). Rewards are left unclipped here: episode returns are
reported in game points, and the trainer clips what it learns from. Life losses are not episode
ends here either; the trainer may treat them as value-target cuts (``--episodic-life``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from envs.watched import vector_env

gym.register_envs(ale_py)
# Warnings and errors only: ALE's banner on stderr would come before a command's one-line error.
ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)

SCREEN = 84


@dataclass(frozen=True)
class AtariSettings:
    """How an ALE game is played and preprocessed (shared by both paths)."""

    frame_stack: int = 1
    repeat_action_probability: float = 0.25  # sticky actions, as the v5 ids
    full_action_space: bool = False
    frameskip: int = 4
    noop_max: int = 30
    mode: int | None = None
    difficulty: int | None = None
    max_episode_frames: int = 108_000  # 30 minutes of play, the usual cap (then truncated)
    flicker: float = 0.0  # probability that an observation's newest frame is blanked
    noise: float = 0.0  # std of Gaussian pixel noise, as a fraction of the 0..255 range

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> AtariSettings:
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown Atari settings {unknown}; known: {sorted(names)}")
        return cls(**kwargs)

    def to_kwargs(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def flavoured(self) -> bool:
        """A mode or difficulty needs the Gymnasium path (the fast path has neither)."""
        return self.mode is not None or self.difficulty is not None


def available_flavours(env_id: str) -> dict[str, list[int]]:
    """The modes and difficulties the game's ROM offers."""
    env = gym.make(env_id)
    try:
        ale = env.unwrapped.ale
        return {
            "mode": [int(m) for m in ale.getAvailableModes()],
            "difficulty": [int(d) for d in ale.getAvailableDifficulties()],
        }
    finally:
        env.close()


def game_of(env_id: str) -> str:
    """``"ALE/Breakout-v5"`` -> ``"breakout"`` (ale-py's ROM name)."""
    return gym.spec(env_id).kwargs["game"]


class FireOnReset(gym.Wrapper):
    """Press FIRE for one emulator frame after each reset (games that wait for it), as
    ``AtariVectorEnv`` does. (SB3's ``FireResetEnv`` presses FIRE and then RIGHT for a whole
    skipped step each, which moves Breakout's paddle.)"""

    def reset(self, *, seed=None, options=None):
        self.env.reset(seed=seed, options=options)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset(options=options)
        return obs, info


def perturb_images(
    images: np.ndarray, rng: np.random.Generator, flicker: float, noise: float
) -> np.ndarray:
    """``(B, stack, H, W)`` uint8 -> a perturbed copy: each observation's newest frame blanked
    with probability ``flicker`` (Flickering Atari, Hausknecht & Stone 2015; with the default
    frame stack of 1 the whole observation), then Gaussian noise of std ``noise * 255``."""
    out = images.copy()
    if flicker > 0:
        out[rng.random(len(out)) < flicker, -1] = 0
    if noise > 0:
        noisy = out.astype(np.float32) + rng.normal(0.0, noise * 255.0, out.shape)
        out = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


class ImagePerturbation(gym.ObservationWrapper):
    """``perturb_images`` on one env's ``{"image": (stack, H, W)}`` observations."""

    def __init__(self, env: gym.Env, flicker: float, noise: float) -> None:
        super().__init__(env)
        self.flicker, self.noise = flicker, noise
        self.rng = np.random.default_rng()

    def reset(self, *, seed=None, options=None):
        if seed is not None:  # its own stream: the game's randomness is untouched
            self.rng = np.random.default_rng(seed + 7_919)
        return super().reset(seed=seed, options=options)

    def observation(self, observation: dict) -> dict:
        image = perturb_images(observation["image"][None], self.rng, self.flicker, self.noise)
        return {"image": image[0]}


class VectorImagePerturbation(VectorWrapper):
    """``perturb_images`` on a vector env's batched observations (final ones included)."""

    def __init__(self, env: VectorEnv, flicker: float, noise: float) -> None:
        super().__init__(env)
        self.flicker, self.noise = flicker, noise
        self.rng = np.random.default_rng()

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(np.asarray(seed).ravel()[0] + 7_919)
        obs, info = self.env.reset(seed=seed, options=options)
        return self._perturb(obs), info

    def _perturb(self, obs: dict) -> dict:
        return {"image": perturb_images(obs["image"], self.rng, self.flicker, self.noise)}

    def step(self, actions):
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        if "final_obs" in info:
            mask = info.get("_final_obs", terminated | truncated)
            finals = list(info["final_obs"])
            for i in np.flatnonzero(mask):
                finals[i] = self._perturb({"image": finals[i]["image"][None]})
                finals[i] = {"image": finals[i]["image"][0]}
            info = {**info, "final_obs": finals}
        return self._perturb(obs), rewards, terminated, truncated, info


class DictImage(gym.ObservationWrapper):
    """``obs`` -> ``{"image": obs}``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = spaces.Dict({"image": env.observation_space})

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        return {"image": np.asarray(observation)}


C_INT_SEEDS = 2**31
"""ale-py's vector env takes each env's seed as a C int: env i's seed s + i must be below this."""


def fold_seed(seed: int, num_envs: int) -> int:
    """``seed`` >= 0 folded so that the seeds of all ``num_envs`` envs (env i gets seed + i) fit a
    C int; seeds that already do are unchanged. (A resumed run reseeds its envs with
    ``seed + 1_000_003 * update``, past 2**31 after 2,147 updates.)"""
    return seed % (C_INT_SEEDS - num_envs)


class VectorDictImage(VectorWrapper):
    """Batched ``obs`` -> ``{"image": obs}``, the final observations of ``SAME_STEP`` included
    (Gymnasium's observation wrappers refuse that autoreset mode). It folds reset seeds into
    what ``AtariVectorEnv`` accepts (``fold_seed``)."""

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        self.single_observation_space = spaces.Dict({"image": env.single_observation_space})
        self.observation_space = spaces.Dict({"image": env.observation_space})

    def reset(self, *, seed=None, options=None):
        if isinstance(seed, int):
            seed = fold_seed(seed, self.num_envs)
        obs, info = self.env.reset(seed=seed, options=options)
        return {"image": obs}, info

    def step(self, actions):
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        if "final_obs" in info:
            info = {**info, "final_obs": [{"image": o} for o in info["final_obs"]]}
            info.setdefault("_final_obs", terminated | truncated)
        return {"image": obs}, rewards, terminated, truncated, info


def make_flavoured_env(
    env_id: str, settings: AtariSettings, render_mode: str | None = None
) -> gym.Env:
    """One ALE env through Gymnasium's wrappers (the flavoured path)."""
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    kwargs: dict[str, Any] = dict(
        repeat_action_probability=settings.repeat_action_probability,
        full_action_space=settings.full_action_space,
        frameskip=1,  # AtariPreprocessing skips (and max-pools) instead
        max_num_frames_per_episode=settings.max_episode_frames,
    )
    if settings.mode is not None:
        kwargs["mode"] = settings.mode
    if settings.difficulty is not None:
        kwargs["difficulty"] = settings.difficulty
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    env = gym.make(env_id, **kwargs)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireOnReset(env)  # one emulator frame of FIRE, as ale-py's vector env does
    env = AtariPreprocessing(
        env, noop_max=settings.noop_max, frame_skip=settings.frameskip, screen_size=SCREEN,
        terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False,
    )  # fmt: skip
    env = FrameStackObservation(env, settings.frame_stack, padding_type="zero")  # as ale-py
    env = DictImage(env)
    if settings.flicker or settings.noise:
        env = ImagePerturbation(env, settings.flicker, settings.noise)
    return env


def make_fast_vector_env(env_id: str, num_envs: int, settings: AtariSettings) -> VectorEnv:
    """``AtariVectorEnv`` (C++ threads) with the dict observation and ``SAME_STEP`` autoreset."""
    from ale_py.vector_env import AtariVectorEnv

    envs = AtariVectorEnv(
        game_of(env_id), num_envs,
        autoreset_mode=AutoresetMode.SAME_STEP,
        repeat_action_probability=settings.repeat_action_probability,
        full_action_space=settings.full_action_space,
        img_height=SCREEN, img_width=SCREEN, grayscale=True, stack_num=settings.frame_stack,
        frameskip=settings.frameskip, maxpool=True, noop_max=settings.noop_max,
        episodic_life=False, reward_clipping=False, use_fire_reset=True,
        max_num_frames_per_episode=settings.max_episode_frames,
    )  # fmt: skip
    return VectorDictImage(envs)


def make_atari_vector_env(
    env_id: str,
    num_envs: int,
    settings: AtariSettings,
    asynchronous: bool = False,
    path: str = "auto",
    timeout: float | None = None,
) -> VectorEnv:
    """``path``: ``"auto"`` (the fast path unless the settings need the flavoured one),
    ``"fast"`` or ``"flavoured"``. ``timeout``: seconds an async worker of the flavoured path
    may take per step or reset (None: no limit)."""
    if path not in ("auto", "fast", "flavoured"):
        raise ValueError(f"path must be auto, fast or flavoured, got {path!r}")
    if path == "fast" and settings.flavoured:
        raise ValueError("the fast path has no modes or difficulties")
    if path == "fast" or (path == "auto" and not settings.flavoured):
        envs = make_fast_vector_env(env_id, num_envs, settings)
        if settings.flicker or settings.noise:
            envs = VectorImagePerturbation(envs, settings.flicker, settings.noise)
        return envs
    fns = [lambda: make_flavoured_env(env_id, settings)] * num_envs
    return vector_env(fns, asynchronous, timeout)
