"""``rims mechanisms``: do the RIMs specialise? Which mechanisms are active in which situations.

The policy plays evaluation episodes (``agents.evaluate``) while every step's top-k mask is
recorded beside the situation it was chosen in: the action it led to, the quarter of the episode,
how the episode ended (``agents.evaluate.outcome_of``), on Minigrid what the agent carries and
what it faces, on memory tasks the cue to remember, and on Atari the lives left, and in Breakout
and Pong where the ball is and which way it moves.
For each situation the report gives each mechanism's activation rate, and for each feature the
mutual information between a mechanism being active and the feature's value, beside its chance
level: the mean information after shuffling the feature over the steps, which is what a plug-in
estimate shows for a mechanism that ignores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv
from minigrid.envs.memory import MemoryEnv

from agents.checkpoint import LoadedPolicy
from agents.config import ConfigError
from agents.evaluate import evaluate
from agents.record import action_name
from agents.report import aligned_table, env_kwargs_for
from agents.selection import SWITCH_MARGIN, switched_units
from envs import atari_ram
from envs.atari import game_of
from envs.factory import env_family, make_env
from envs.mixture import combinations
from envs.shifts import shift_label
from envs.suites import SuiteRow
from policies.actor_critic import ActResult

PHASES = ("1st quarter", "2nd quarter", "3rd quarter", "4th quarter")
DIRECTIONS = ("east", "south", "west", "north")  # Minigrid's agent_dir 0..3
SHUFFLES = 100
ORDERED = ("phase", "shift")  # features whose values are listed sorted, not by their steps


@dataclass(frozen=True)
class FeatureStats:
    """One feature of the situation: its values (most steps first), each with its step count
    and each mechanism's activation rate, and per mechanism the mutual information between
    being active and the feature's value (bits) with its chance level."""

    name: str
    values: tuple[str, ...]
    steps: tuple[int, ...]
    rates: tuple[tuple[float, ...], ...]  # [value][unit]: P(active | value)
    information: tuple[float, ...]  # [unit]: I(active; feature), bits
    chance: tuple[float, ...]  # [unit]: the mean of that over shuffles of the feature


@dataclass(frozen=True)
class MechanismReport:
    """What ``rims mechanisms`` prints and writes (JSON)."""

    run: str
    env: str
    shift: str
    episodes: int
    steps: int
    units: int
    k: int
    rates: tuple[float, ...]  # [unit]: P(active) over the steps reported
    features: tuple[FeatureStats, ...]
    where: tuple[str, ...] = ()  # the steps reported: "feature=value" or "feature=a or b"


class MechanismRecorder:
    """A ``StepObserver`` that keeps each counted episode's masks and situations."""

    def __init__(self, action_names: Sequence[str], mixture: bool = False) -> None:
        self.action_names = list(action_names)
        self.mixture = mixture  # a feature "shift": which member of the mixture is played
        self.masks: list[np.ndarray] = []  # each (U,) bool
        self.situations: list[dict[str, str]] = []
        self._pending: dict[int, list[tuple[np.ndarray, dict[str, str]]]] = {}
        self._shift = ""
        self._scenes: dict[int, atari_ram.Scene] = {}  # each env's last step's, this episode

    def start(self, num_envs: int, shifts: Sequence[tuple[str, str]]) -> None:
        self._pending = {i: [] for i in range(num_envs)}
        self._shift = shift_label(shifts)
        self._scenes = {}

    def before_step(self, envs: VectorEnv, act: ActResult, info: dict[str, Any]) -> None:
        if act.info.mask is None:
            raise ValueError("the policy's core reports no mechanisms (not RIMs)")
        masks = act.info.mask[0].cpu().numpy()  # (1, B, U) -> (B, U)
        actions = act.actions.cpu().numpy()
        singles = sub_envs(envs)
        for i, pending in self._pending.items():
            situation = {"action": self.action_names[int(actions[i])]}
            if self.mixture:
                situation["shift"] = self._shift
            if singles is not None:
                situation |= situation_of(singles[i])
                scene = scene_of(singles[i])
                if scene is not None:
                    situation |= ball_situation(scene, self._scenes.get(i))
                    self._scenes[i] = scene
            situation |= info_situation(info, i)
            pending.append((masks[i], situation))

    def episode_end(self, env_index: int, counted: bool, outcome: str) -> None:
        steps, self._pending[env_index] = self._pending[env_index], []
        self._scenes.pop(env_index, None)
        if not counted:
            return
        seen = "no"
        for t, (mask, situation) in enumerate(steps):
            self.masks.append(mask)
            # every step of the episode is labelled with how the episode ended
            situation = {**situation, "phase": PHASES[4 * t // len(steps)], "outcome": outcome}
            if "cue in view" in situation:  # a memory task: has the cue been in view yet?
                seen = "yes" if situation["cue in view"] == "yes" else seen
                situation["cue seen so far"] = seen
            self.situations.append(situation)


def sub_envs(envs: VectorEnv) -> list | None:
    """The single envs of an in-process vector env (to read their state), else None (ALE's C++
    vector env)."""
    return getattr(envs.unwrapped, "envs", None)


def info_situation(info: dict[str, Any], index: int) -> dict[str, str]:
    """What the vector info of env ``index``'s current observation says of the situation: on
    Atari the lives left (ALE reports them on both env paths); nothing where the info does not
    say (Minigrid), or says it not for this env (a ``_lives`` mask)."""
    lives, given = info.get("lives"), info.get("_lives")
    if lives is None or (given is not None and not given[index]):
        return {}
    return {"lives": str(int(lives[index]))}


def situation_of(env) -> dict[str, str]:
    """What an env's state says of the situation: on Minigrid what the agent carries and the
    cell in front of it (a door with its state), and on MemoryEnv the cue to remember; an env
    may add its own features with a ``situation()`` method (``envs.memory.CueMemoryEnv``)."""
    inner = env.unwrapped
    found = minigrid_situation(inner) if hasattr(inner, "grid") else {}
    if callable(getattr(inner, "situation", None)):
        found |= inner.situation()
    return found


def scene_of(env) -> atari_ram.Scene | None:
    """The ball and paddle of an Atari env whose RAM ``envs.atari_ram`` reads, else None."""
    inner = env.unwrapped
    ale, spec = getattr(inner, "ale", None), getattr(inner, "spec", None)
    if ale is None or spec is None:  # not an ALE env
        return None
    game = game_of(spec.id)
    return atari_ram.scene(game, ale.getRAM()) if atari_ram.has_scene(game) else None


BALL_FEATURES = ("ball", "ball from paddle", "ball moving")
NEAR_PADDLE = 30  # pixels above Breakout's paddle in which the ball is "near the paddle"


def ball_situation(now: atari_ram.Scene, before: atari_ram.Scene | None) -> dict[str, str]:
    """Where the ball is and which way it moves (against ``before``, the same episode's last
    step, None on its first), relative to our paddle. Breakout: near the bricks, mid-field or
    near the paddle; left of the paddle, over it or right of it; up or down. Pong: in their half
    or ours; above the paddle, level with it or below it; toward us or away."""
    if now.ball is None:
        return dict.fromkeys(BALL_FEATURES, "not in play")
    x, y = now.ball
    first, last = now.paddle
    previous = None if before is None else before.ball
    if now.game == "breakout":
        top = atari_ram.BREAKOUT_PADDLE_TOP - NEAR_PADDLE
        where = ("near the bricks" if y < atari_ram.BREAKOUT_BRICKS_END
                 else "mid-field" if y < top else "near the paddle")  # fmt: skip
        side = "left of it" if x < first else "right of it" if x > last else "over it"
        ways, along, then = ("down", "up"), y, None if previous is None else previous[1]
    else:
        where = "our half" if x >= atari_ram.PONG_MIDDLE else "their half"
        side = "above it" if y < first else "below it" if y > last else "level with it"
        ways, along, then = ("toward us", "away"), x, None if previous is None else previous[0]
    moving = "unknown" if then is None or then == along else ways[0] if along > then else ways[1]
    return dict(zip(BALL_FEATURES, (where, side, moving)))


def minigrid_situation(grid_env) -> dict[str, str]:
    """What a Minigrid agent carries and faces, and the way it faces; in MemoryEnv also the cue
    (the object in the start room, at (1, height // 2 - 1)) and whether the agent sees it now
    (the recorder adds whether it has seen it so far in the episode)."""
    carrying = grid_env.carrying
    cell = grid_env.grid.get(*grid_env.front_pos)
    if cell is None:
        facing = "empty"
    elif cell.type == "door":
        facing = (
            "locked door" if cell.is_locked else ("open door" if cell.is_open else "closed door")
        )
    else:
        facing = cell.type
    found = {
        "carrying": "nothing" if carrying is None else carrying.type,
        "facing": facing,
        "direction": DIRECTIONS[grid_env.agent_dir],
    }
    if isinstance(grid_env, MemoryEnv):
        cue = grid_env.grid.get(1, grid_env.height // 2 - 1)
        found["cue"] = "none" if cue is None else cue.type
        found["cue in view"] = "yes" if grid_env.agent_sees(1, grid_env.height // 2 - 1) else "no"
    return found


def mutual_information(masks: np.ndarray, codes: np.ndarray, values: int) -> np.ndarray:
    """I(active_u; feature) in bits for each unit u: ``masks`` (N, U) bool, ``codes`` (N,) the
    feature's value index per step -> (U,). Plug-in estimate; 0 log 0 = 0."""
    n = len(codes)
    one_hot = np.eye(values)[codes]  # (N,) -> (N, V)
    per_value = one_hot.sum(0)[:, None]  # (V, 1) steps per value
    active = one_hot.T @ masks.astype(float)  # (V, N) @ (N, U) -> (V, U) active steps
    p_active = masks.mean(0)  # (U,)
    information = np.zeros(masks.shape[1])
    for joint, marginal in ((active, p_active), (per_value - active, 1 - p_active)):
        p_joint = joint / n  # (V, U)
        expected = (per_value / n) * marginal  # (V, 1) * (U,) -> (V, U)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p_joint > 0, p_joint * np.log2(p_joint / expected), 0.0)
        information += terms.sum(0)
    return np.maximum(information, 0.0)  # rounding can leave -1e-17


def feature_stats(
    name: str, masks: np.ndarray, labels: Sequence[str], seed: int = 0
) -> FeatureStats:
    """``masks`` (N, U) bool against a feature's ``labels`` (N,). Values are listed with the
    most steps first, but the phases and a mixture's members in their own order."""
    values, codes, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    in_order = name in ORDERED
    order = np.argsort(np.zeros(len(counts)) if in_order else -counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    codes = rank[codes]
    rates = tuple(tuple(masks[codes == v].mean(0).tolist()) for v in range(len(values)))
    rng = np.random.default_rng(seed)
    chance = np.mean(
        [mutual_information(masks, rng.permutation(codes), len(values)) for _ in range(SHUFFLES)],
        axis=0,
    )
    return FeatureStats(
        name,
        tuple(str(values[i]) for i in order),
        tuple(int(counts[i]) for i in order),
        rates,
        tuple(mutual_information(masks, codes, len(values)).tolist()),
        tuple(chance.tolist()),
    )


def inspect_mechanisms(
    loaded: LoadedPolicy,
    row: SuiteRow,
    episodes: int,
    seed: int = 0,
    num_envs: int = 16,
    deterministic: bool = False,
    where: Sequence[tuple[str, str]] = (),
) -> MechanismReport:
    """Play ``episodes`` evaluation episodes of ``row`` (as ``rims eval`` would) and report
    which mechanisms were active in which situations, over the steps whose situation has every
    ``(feature, value)`` of ``where`` (all steps without it)."""
    kwargs = env_kwargs_for(loaded.config, row.env)
    env = make_env(row.env, shifts=row.shifts, **kwargs)
    names = [action_name(env, a) for a in range(loaded.policy.num_actions)]
    env.close()
    recorder = MechanismRecorder(names, mixture=len(combinations(row.shifts)) > 1)
    # Atari's ball is read from the emulators' RAM, which ALE's C++ vector env does not show.
    single = env_family(row.env) == "atari" and atari_ram.has_scene(game_of(row.env))
    evaluate(
        loaded.policy, row.env, episodes, seed, num_envs, deterministic, row.shifts, kwargs,
        recorder, single,
    )  # fmt: skip
    masks = np.stack(recorder.masks)  # N x (U,) -> (N, U)
    keep = steps_where(recorder.situations, where)
    return make_report(
        loaded.label, row.env, row.label, episodes, loaded.config.k, masks[keep],
        [recorder.situations[i] for i in keep], where,
    )  # fmt: skip


def conditions(where: Sequence[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """``where``'s values grouped by feature, in the order given: a feature named more than
    once admits any of its values."""
    grouped: dict[str, tuple[str, ...]] = {}
    for feature, value in where:
        values = grouped.get(feature, ())
        grouped[feature] = values if value in values else (*values, value)
    return grouped


def steps_where(
    situations: Sequence[dict[str, str]], where: Sequence[tuple[str, str]]
) -> list[int]:
    """The indices of the steps whose situation has, for every feature of ``where``, one of the
    values given for it (``[("outcome", "success"), ("outcome", "failure"), ("cue", "key")]``:
    the key-cue steps of the episodes that ended either way); ``ConfigError`` naming the
    features or values there are where a condition matches none."""
    keep = list(range(len(situations)))
    for feature, values in conditions(where).items():
        seen = {s[feature] for s in situations if feature in s}
        if not seen:
            known = ", ".join(dict.fromkeys(k for s in situations for k in s))
            raise ConfigError(f"--where {feature}: no such feature here (features: {known})")
        keep = [i for i in keep if situations[i].get(feature) in values]
        if not keep:
            raise ConfigError(
                f"--where {feature}={' or '.join(values)}: no step left (values of {feature}: "
                f"{', '.join(sorted(seen))})"
            )
    return keep


def make_report(
    run: str, env: str, shift: str, episodes: int, k: int,
    masks: np.ndarray, situations: Sequence[dict[str, str]],
    where: Sequence[tuple[str, str]] = (),
) -> MechanismReport:  # fmt: skip
    """The rates and informations of recorded steps (``inspect_mechanisms``); ``where`` names
    the condition they were chosen by, and a feature it fixes to one value is left out."""
    grouped = conditions(where)
    fixed = {feature for feature, values in grouped.items() if len(values) == 1}
    names = [n for n in dict.fromkeys(key for s in situations for key in s) if n not in fixed]
    features = tuple(feature_stats(n, masks, [s[n] for s in situations]) for n in names)
    return MechanismReport(
        run, env, shift, episodes, len(masks), masks.shape[1], k,
        tuple(masks.mean(0).tolist()), features,
        tuple(f"{f}={' or '.join(values)}" for f, values in grouped.items()),
    )  # fmt: skip


def selection_summary(rates: Sequence[float], margin: float = SWITCH_MARGIN) -> str:
    """Which units top-k selection switches, and which it keeps on or off (active on more than
    ``1 - margin`` or less than ``margin`` of the steps): a selection that switches nothing
    leaves a fixed subset of the RIMs, a smaller recurrent net."""

    def units(which: list[int]) -> str:
        return ", ".join(map(str, which)) or "none"

    on = [u for u, x in enumerate(rates) if x > 1 - margin]
    off = [u for u, x in enumerate(rates) if x < margin]
    return (
        f"units switched by selection: {units(switched_units(rates, margin))}; always on: "
        f"{units(on)}; always off: {units(off)} (on or off in over {1 - margin:.0%} of the steps)"
    )


def format_report(r: MechanismReport) -> str:
    """A table per feature: each value's steps and each mechanism's activation rate, and the
    feature's mutual information with each mechanism and its chance level."""
    units = [f"unit {u}" for u in range(r.units)]
    where = f" where {' and '.join(r.where)}" if r.where else ""
    lines = [
        f"{r.run} on {r.env}{f' ({r.shift})' if r.shift else ''}: {r.episodes} episodes, "
        f"{r.steps:,} steps{where}, {r.k} of {r.units} mechanisms active a step",
        selection_summary(r.rates),
    ]
    label_w = max(len("  information (bits)"), *(len(v) + 2 for f in r.features for v in f.values))
    head = f"{'':<{label_w}}  {'steps':>7}  " + "  ".join(f"{u:>7}" for u in units)
    lines += [head, "-" * len(head)]

    def line(label: str, steps: str, cells: Sequence[str]) -> str:
        return f"{label:<{label_w}}  {steps:>7}  " + "  ".join(f"{c:>7}" for c in cells)

    lines.append(line("active (all steps)", f"{r.steps}", [f"{x:.2f}" for x in r.rates]))
    for f in r.features:
        lines.append(f.name)
        for value, steps, rates in zip(f.values, f.steps, f.rates):
            lines.append(line(f"  {value}", f"{steps}", [f"{x:.2f}" for x in rates]))
        lines.append(line("  information (bits)", "", [f"{x:.3f}" for x in f.information]))
        lines.append(line("  by chance", "", [f"{x:.3f}" for x in f.chance]))
    lines.append(
        "rates: the share of steps in that situation on which the mechanism was active; "
        "information: mutual information between a mechanism being active and the feature "
        f"(bits; by chance: its mean over {SHUFFLES} shuffles of the feature over the steps)"
    )
    return "\n".join(lines)


def format_rows(reports: Sequence[MechanismReport]) -> str:
    """Several rows (a suite) side by side: each row's activation rate of every unit and the
    units selection switches there."""
    columns = [f"unit {u}" for u in range(reports[0].units)] + ["switched", "steps"]
    texts = {
        (r.env, r.shift): {
            **{f"unit {u}": f"{x:.2f}" for u, x in enumerate(r.rates)},
            "switched": ", ".join(map(str, switched_units(r.rates))) or "none",
            "steps": f"{r.steps}",
        }
        for r in reports
    }
    first = reports[0]
    where = f", steps where {' and '.join(first.where)}" if first.where else ""
    head = (
        f"{first.run}: {first.episodes} episodes a row{where}, {first.k} of {first.units} "
        "mechanisms active a step"
    )
    footer = (
        "unit i: the share of the row's steps on which it was active; switched: the units active "
        f"on {SWITCH_MARGIN:.0%}-{1 - SWITCH_MARGIN:.0%} of them (--json: every row's full report)"
    )
    return "\n".join([head, *aligned_table(columns, texts), footer])
