"""Building vector envs from an env id: validation, per-env seeding, autoreset, episode stats.

Every env built here returns dict observations (a non-dict space becomes ``{"obs": ...}``), so
the policy and the storage handle one observation type. Vector envs autoreset in Gymnasium's
``SAME_STEP`` mode: the observation returned with ``terminated``/``truncated`` is already the
first observation of the next episode, and the last observation of the finished one is in
``info["final_obs"]`` (needed to bootstrap truncated episodes).
"""

from __future__ import annotations

import difflib
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from gymnasium.wrappers.vector import RecordEpisodeStatistics

import envs.memory  # noqa: F401  (registers rims/CueMemory-v0)
from envs.atari import AtariSettings, make_atari_vector_env, make_flavoured_env
from envs.minigrid import is_minigrid, make_minigrid
from envs.mixture import UNSHIFTED, ShiftMixture, ShiftShare, combinations
from envs.probe import TimeLimitReached, failure_summary, time_limit
from envs.shifts import ShiftError, shift_effect, shift_label
from envs.watched import vector_env


class EnvError(ValueError):
    """An env that cannot be built as asked (unknown id, unsupported spaces); one-line message."""


__all__ = ["EnvError", "ShiftError", "make_env", "make_vector_env", "probe_resets"]

PROBE_SEEDS = (0, 1, 2, 3)  # the seeds ``probe_resets`` resets with unless told others
PROBE_SECONDS = 10.0  # how long one probing reset may take
CALL_SECONDS = 60.0  # how long one step or reset of in-process envs may take in eval and record
_PROBED: set[tuple] = set()  # the probes passed in this process


def env_family(env_id: str) -> str:
    """``"minigrid"``, ``"atari"`` (ALE ids) or ``"gym"`` (anything else registered)."""
    if is_minigrid(env_id):
        return "minigrid"
    if env_id.startswith("ALE/"):
        return "atari"
    return "gym"


def check_env_id(env_id: str) -> None:
    """Raise ``EnvError`` with the closest registered ids unless ``env_id`` is registered."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise EnvError(f"unknown env id {env_id!r}{hint}")


class DictObservation(gym.ObservationWrapper):
    """Wrap a non-dict observation as ``{"obs": observation}``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = spaces.Dict({"obs": env.observation_space})

    def observation(self, observation: Any) -> dict[str, Any]:
        return {"obs": observation}


Shifts = Sequence[tuple[str, str]]


def make_env(
    env_id: str,
    render_mode: str | None = None,
    shifts: Shifts = (),
    shift_share: float | None = None,
    other_shifts: Shifts = (),
    **kwargs: Any,
) -> gym.Env:
    """One env with dict observations and a discrete action space, with ``shifts`` applied
    (``[("size", "8"), ...]``, see ``envs.shifts``); a shift with several values (``size=5,6``)
    makes a ``ShiftMixture`` of one env per combination of them. With ``shift_share``, a
    ``ShiftShare``: that share of episodes is played with the shifts, the others with
    ``other_shifts`` (none by default)."""
    check_env_id(env_id)
    if shift_share is not None:
        shifted = make_env(env_id, render_mode, shifts, **kwargs)
        other = make_env(env_id, render_mode, other_shifts, **kwargs)
        labels = (shift_label(shifts), shift_label(other_shifts) or UNSHIFTED)
        return ShiftShare(shifted, other, labels, shift_share)
    mixed = combinations(shifts)
    if len(mixed) > 1:
        members = [make_env(env_id, render_mode, c, **kwargs) for c in mixed]
        return ShiftMixture(members, [shift_label(c) for c in mixed])
    effect = shift_effect(env_id, env_family(env_id), shifts)
    kwargs.update(effect.env_kwargs)
    if env_family(env_id) == "atari":
        env = make_flavoured_env(env_id, atari_settings(env_id, kwargs), render_mode)
        for wrap in effect.wrappers:
            env = wrap(env)
        return env
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        env = (
            make_minigrid(env_id, **kwargs)
            if env_family(env_id) == "minigrid"
            else gym.make(env_id, **kwargs)
        )
    except TypeError as err:  # an env kwarg the env does not take
        raise EnvError(f"cannot build {env_id} with {kwargs}: {err}") from None
    if not isinstance(env.action_space, spaces.Discrete):
        env.close()
        raise EnvError(f"{env_id} has action space {env.action_space}; only Discrete is supported")
    if not isinstance(env.observation_space, spaces.Dict):
        env = DictObservation(env)
    for wrap in effect.wrappers:
        env = wrap(env)
    return env


def make_vector_env(
    env_id: str,
    num_envs: int,
    asynchronous: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    shifts: Shifts = (),
    timeout: float | None = None,
    atari_path: str = "auto",
    shift_share: float | None = None,
    other_shifts: Shifts = (),
) -> VectorEnv:
    """``num_envs`` copies of ``env_id`` (sync or subprocess-async), ``SAME_STEP`` autoreset,
    episode statistics in ``info["episode"]``. Seed them with ``reset(seed=s)``: env i gets s+i.
    ``timeout``: async only, seconds a worker may take per step or reset (None: no limit).
    Atari uses ``make_atari_vector_env`` (``atari_path`` is its ``path``: ``"flavoured"`` for
    single Gymnasium envs whose state can be read), except for a mixture: its members are
    single envs of the flavoured path (``make_env``) in a Gymnasium vector env, since ALE's C++
    vector env plays one setting; so are a ``shift_share``'s (``make_env``, its other episodes
    played with ``other_shifts``). Change that share with
    ``envs.unwrapped.call("set_shift_share", share)``."""
    kwargs = dict(env_kwargs or {})
    shifts, other_shifts = tuple(shifts), tuple(other_shifts)
    probe_resets(env_id, shifts, kwargs)  # fail here in one line, not inside a worker
    if shift_share is not None:
        probe_resets(env_id, other_shifts, kwargs)
    one_setting = len(combinations(shifts)) == 1 and shift_share is None
    if env_family(env_id) == "atari" and one_setting:
        effect = shift_effect(env_id, "atari", shifts)
        settings = atari_settings(env_id, {**kwargs, **effect.env_kwargs})
        envs = make_atari_vector_env(env_id, num_envs, settings, asynchronous, atari_path, timeout)
        return RecordEpisodeStatistics(envs)

    def make_one() -> gym.Env:
        return make_env(env_id, shifts=shifts, shift_share=shift_share,
                        other_shifts=other_shifts, **kwargs)  # fmt: skip

    def make_in_worker() -> gym.Env:
        # Ctrl-C reaches the whole process group; the trainer handles it, workers must not die.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return make_one()

    fns: list[Callable[[], gym.Env]] = [make_in_worker if asynchronous else make_one] * num_envs
    return RecordEpisodeStatistics(vector_env(fns, asynchronous, timeout))


def env_label(env_id: str, shifts: Shifts = ()) -> str:
    """``"MiniGrid-DoorKey-5x5-v0 with size=8"`` (the id alone without shifts)."""
    return f"{env_id} with {shift_label(shifts)}" if shifts else env_id


def probe_resets(
    env_id: str,
    shifts: Shifts = (),
    env_kwargs: dict[str, Any] | None = None,
    seeds: Sequence[int] = PROBE_SEEDS,
    seconds: float = PROBE_SECONDS,
) -> None:
    """``EnvError`` in one line unless a fresh ``env_id`` (with ``shifts`` and ``env_kwargs``)
    builds and resets with each of ``seeds``, each reset within ``seconds``: Minigrid makes its
    levels at reset, where a setting its generator cannot honour fails or loops forever
    (``envs.probe``). Atari envs are only built (their settings fail there). A probe that
    passed is not repeated in the same process."""
    mixed = combinations(shifts)
    if len(mixed) > 1:  # each member makes its levels: a failure names its combination
        for combination in mixed:
            probe_resets(env_id, combination, env_kwargs, seeds, seconds)
        return
    kwargs = dict(env_kwargs or {})
    key = (env_id, tuple(shifts), repr(sorted(kwargs.items())), tuple(seeds))
    if key in _PROBED:
        return
    try:
        env = make_env(env_id, shifts=shifts, **kwargs)
    except (EnvError, ShiftError):
        raise
    except Exception as err:  # the env's constructor refused its settings
        raise env_failure(env_id, shifts, "when built", err) from None
    try:
        if env_family(env_id) != "atari":
            for seed in seeds:
                try:
                    with time_limit(seconds):
                        env.reset(seed=seed)
                except TimeLimitReached:
                    raise EnvError(
                        f"{env_label(env_id, shifts)} did not finish a reset within {seconds:g} s "
                        f"(seed {seed}); its level generator may be looking for room or objects "
                        "that these settings do not allow"
                    ) from None
                except Exception as err:
                    raise env_failure(
                        env_id, shifts, f"at a reset with seed {seed}", err, env
                    ) from None
    finally:
        env.close()
    _PROBED.add(key)


def env_failure(
    env_id: str, shifts: Shifts, what: str, err: BaseException, env: Any = None
) -> EnvError:
    """The one-line ``EnvError`` for an exception ``err`` that the env (or vector env) ``env``
    raised ``what`` (e.g. ``"during evaluation"``); the place named is in the env's own module
    where the traceback passes through it."""
    summary = failure_summary(err, None if env is None else env_module(env))
    return EnvError(f"{env_label(env_id, shifts)} failed {what}: {summary}")


@contextmanager
def env_errors(
    env_id: str, shifts: Shifts, what: str, env: Any = None, seconds: float | None = None
) -> Iterator[None]:
    """Turn an exception that the block's env calls raise (a level the env cannot make, a
    crashed simulator) into ``env_failure``'s one-line ``EnvError``. With ``seconds``, a block
    that runs longer (a level generator that never finds room) is stopped and reported the same
    way, where ``env`` runs in this process (``env_module``; ``envs.probe.time_limit``);
    envs in other processes are timed by their vector env."""
    try:
        with in_process_limit(env, seconds):
            yield
    except TimeLimitReached:
        raise EnvError(
            f"{env_label(env_id, shifts)} did not answer within {seconds:g} s {what} (a "
            "level generator looking for room that these settings do not leave?)"
        ) from None
    except EnvError:
        raise
    except Exception as err:
        raise env_failure(env_id, shifts, what, err, env) from err


def in_process_limit(env: Any, seconds: float | None) -> AbstractContextManager[None]:
    """``envs.probe.time_limit(seconds)`` where ``env`` runs in this process (``env_module``);
    no limit for envs in other processes (they time their workers), or without ``seconds``."""
    if seconds is None or env is None or env_module(env) is None:
        return nullcontext()
    return time_limit(seconds)


def env_module(env: Any) -> str | None:
    """The module of the env class under ``env``'s wrappers (of a ``SyncVectorEnv``'s first
    env; None for envs in other processes)."""
    base = getattr(env, "unwrapped", env)
    if isinstance(base, VectorEnv):
        inner = getattr(base, "envs", None)
        if not inner:
            return None
        base = inner[0].unwrapped
    return type(base).__module__


def atari_settings(env_id: str, kwargs: dict[str, Any]) -> AtariSettings:
    try:
        return AtariSettings.from_kwargs(kwargs)
    except (TypeError, ValueError) as err:
        raise EnvError(f"cannot build {env_id}: {err}") from None


def final_observations(obs: dict[str, np.ndarray], info: dict, ended: np.ndarray) -> dict:
    """The last observation of every episode that ended this step, other entries from ``obs``.

    obs: batched dict observation returned by ``step`` (already the next episode's first one
    where ``ended``); info: that step's info; ended: ``(B,)`` bool, terminated | truncated.
    """
    if not ended.any():
        return obs
    final = {key: value.copy() for key, value in obs.items()}
    for i in np.flatnonzero(ended & info.get("_final_obs", ended)):
        for key in final:
            final[key][i] = info["final_obs"][i][key]
    return final
