"""Envs that misbehave on purpose, for the robustness tests (importable by env workers)."""

from __future__ import annotations

import os
import signal
import time

import gymnasium as gym

from envs.memory import CueMemoryEnv


class NaNRewardEnv(CueMemoryEnv):
    """The cue task, whose rewards turn NaN after ``after`` steps."""

    def __init__(self, after: int = 40) -> None:
        super().__init__(delay=2)
        self.after, self.steps = after, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        return obs, float("nan") if self.steps > self.after else reward, terminated, truncated, info


class CrashEnv(CueMemoryEnv):
    """The cue task, whose ``step`` raises after ``after`` steps."""

    def __init__(self, after: int = 40, render_mode: str | None = None) -> None:
        super().__init__(delay=2, render_mode=render_mode)
        self.after, self.steps = after, 0

    def step(self, action):
        self.steps += 1
        if self.steps > self.after:
            raise RuntimeError("boom: the simulator crashed")
        return super().step(action)


class DieEnv(CrashEnv):
    """The cue task, whose process dies without a word (as on a segfault) after ``after`` steps."""

    def step(self, action):
        self.steps += 1
        if self.steps > self.after:
            os.kill(os.getpid(), signal.SIGKILL)
        return CueMemoryEnv.step(self, action)


class HangEnv(CrashEnv):
    """The cue task, whose ``step`` never returns (a deadlocked simulator) after ``after`` steps."""

    def step(self, action):
        self.steps += 1
        if self.steps > self.after:
            time.sleep(3600)  # the trainer's env timeout ends this worker long before
        return CueMemoryEnv.step(self, action)


class NoLevelEnv(CueMemoryEnv):
    """The cue task, whose level generator fails at every reset (a layout it cannot make)."""

    def reset(self, *, seed=None, options=None):
        assert self.delay < 0  # a bare assert, as Minigrid's generators have
        return super().reset(seed=seed, options=options)


class EndlessResetEnv(CueMemoryEnv):
    """The cue task, whose reset searches forever (rejection sampling with no room left)."""

    def reset(self, *, seed=None, options=None):
        while self.delay >= 0:
            pass
        return super().reset(seed=seed, options=options)


class LateNoLevelEnv(CueMemoryEnv):
    """The cue task, whose level generator fails on every reset without a seed: the first
    episode of each env runs, the next (an autoreset) cannot be made."""

    def __init__(self) -> None:
        super().__init__(delay=2)

    def reset(self, *, seed=None, options=None):
        if seed is None:
            raise ValueError("low >= high")
        return super().reset(seed=seed, options=options)


class LateEndlessResetEnv(LateNoLevelEnv):
    """The cue task, whose every reset without a seed (an autoreset) searches forever."""

    def reset(self, *, seed=None, options=None):
        while seed is None:
            pass
        return super().reset(seed=seed, options=options)


class HighSeedNoLevelEnv(LateNoLevelEnv):
    """The cue task, which cannot make a level for a seed of 100 or more (the probe's seeds, 0-3,
    pass)."""

    def reset(self, *, seed=None, options=None):
        if seed is not None and seed >= 100:
            raise ValueError("no room for the goal")
        return CueMemoryEnv.reset(self, seed=seed, options=options)


class RankOneCrashEnv(CrashEnv):
    """``CrashEnv`` in torchrun's rank 1; the cue task itself in every other process."""

    def step(self, action):
        if os.environ.get("RANK") != "1":
            return CueMemoryEnv.step(self, action)
        return super().step(action)


for name, cls in (
    ("HighSeedNoLevel", HighSeedNoLevelEnv),
    ("LateEndlessReset", LateEndlessResetEnv),
    ("NoLevel", NoLevelEnv),
    ("EndlessReset", EndlessResetEnv),
    ("LateNoLevel", LateNoLevelEnv),
    ("NaNReward", NaNRewardEnv),
    ("Crash", CrashEnv),
    ("RankOneCrash", RankOneCrashEnv),
    ("Die", DieEnv),
    ("Hang", HangEnv),
):
    if f"rims-test/{name}-v0" not in gym.registry:
        gym.register(f"rims-test/{name}-v0", entry_point=f"tests.faulty_envs:{cls.__name__}")
