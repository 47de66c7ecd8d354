"""The training config: one typed dataclass, validated on construction, with per-family presets.

Every field has a one-line help that becomes its ``--help`` text. Values a user does not give
come from the preset of the env's family (``PRESETS``), then from the field defaults below
(sized for Minigrid; the Minigrid preset changes only the training chunks, the entropy bonus
and the advantage std floor).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from agents.flags import option, type_mismatch
from agents.schedule import Schedule, ScheduleError
from envs.factory import check_env_id, env_family
from envs.mission import missions_vary
from envs.mixture import combinations
from envs.shifts import ShiftError, parse_shift, shift_effect
from envs.suites import SuiteRow
from policies.spec import (
    CELLS,
    CORES,
    ENCODERS,
    SAVED_BEFORE_FIELD,
    PolicySpec,
    triton_unsupported,
)


class ConfigError(ValueError):
    """An impossible or inconsistent setting; the message is one line naming the field."""


@dataclass(frozen=True)
class TrainConfig:
    """Recurrent PPO with a RIMs, LSTM, GRU or feed-forward core."""

    # --- run
    env: str = option("MiniGrid-DoorKey-5x5-v0", "Gymnasium env id to train on")
    shift: tuple[str, ...] = option(
        (),
        "train on the env shifted: KEY=VALUE as rims eval --shift takes it (repeatable); several "
        "values (size=5,6,7) make each episode draw one of them (not on Atari)",
        metavar="KEY=VALUE",
    )
    shift_schedule: str | None = option(
        None,
        "the share of episodes played with --shift as a piecewise-linear schedule over the "
        "run's steps, STEP:SHARE,... (0:1,500000:1,1000000:0 moves to the unshifted env over "
        "the second half million steps); the other episodes are unshifted (none: all shifted). "
        "One that ends at 0 makes the unshifted env what eval/return and rims eval RUN play",
        metavar="STEP:SHARE,...",
    )
    other_shift: tuple[str, ...] = option(
        (),
        "with --shift-schedule, the episodes not played with --shift play the env with these "
        "shifts instead of unshifted, KEY=VALUE as --shift takes it (repeatable): a curriculum "
        "from one mixture to another (size=7,9 first, then --shift size=7,9,11,13)",
        metavar="KEY=VALUE",
    )
    schedule_after_return: float | None = option(
        None,
        "--shift-schedule's steps count from the first update after which the mean return of "
        "the last 100 training episodes reaches this; before it, the share stays at its step "
        "0 (a curriculum that moves on once its first levels are learned). None: from the "
        "run's start",
        metavar="RETURN",
    )
    core: str = option("rims", "recurrent core of the policy", CORES)
    total_steps: int = option(
        300_000, "agent-env interactions to train for, summed over envs (Atari: 4 frames each)"
    )
    seed: int = option(1, "seed of torch, the envs (env i gets seed+i) and minibatch order")
    run_dir: str | None = option(
        None,
        "run directory for config, TensorBoard events, checkpoints "
        "(None: runs/<env>__<core>__s<seed>__<date-time>)",
    )
    device: str = option("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    tf32: bool = option(
        False,
        "on CUDA, float32 matmuls run on TF32 tensor cores (about 3 significant digits, as "
        "cuDNN's RNNs and convolutions do by default); no effect on the CPU",
    )
    resume: bool = option(False, "continue the run in --run-dir from its latest checkpoint")
    overwrite: bool = option(False, "start afresh even if --run-dir already holds a run")
    # --- rollout and PPO
    num_envs: int = option(16, "parallel envs")
    async_envs: bool = option(False, "step envs in subprocesses (AsyncVectorEnv) instead of inline")
    env_timeout: float = option(
        600.0,
        "seconds an env may take per step or reset before the run stops with a checkpoint "
        "(async workers are ended; inline envs are stopped where they run Python code) "
        "(0: wait forever)",
    )
    num_steps: int = option(128, "steps per env per rollout (the rollout is num_steps x num_envs)")
    num_minibatches: int = option(4, "minibatches per epoch")
    update_epochs: int = option(4, "PPO epochs per rollout")
    bptt: int = option(
        0,
        "train on chunks of this many steps with their stored start states (0, or at least "
        "--num-steps: whole rollouts)",
    )
    learning_rate: float = option(7e-4, "Adam learning rate (the paper's Table 3 value)")
    anneal_lr: bool = option(True, "anneal the learning rate linearly to 0 over the run")
    gamma: float = option(0.99, "discount factor")
    gae_lambda: float = option(0.95, "GAE lambda")
    clip_coef: float = option(0.2, "PPO ratio clip")
    clip_vloss: bool = option(True, "clip the value loss around the old values")
    ent_coef: float = option(0.01, "entropy bonus coefficient")
    vf_coef: float = option(0.5, "value loss coefficient")
    max_grad_norm: float = option(0.5, "global gradient-norm clip")
    norm_adv: bool = option(True, "normalise advantages per minibatch")
    adv_std_floor: float = option(
        0.0,
        "with --norm-adv, divide by max(std, this): a minibatch whose advantages are only value "
        "noise (sparse reward, no success yet) is not scaled up to unit size (0: by std alone)",
    )
    target_kl: float | None = option(
        0.02, "stop the epochs early past this approximate KL (none: never)"
    )
    # --- policy
    feature_size: int = option(64, "encoder output size")
    hidden_size: int = option(
        32, "state size of one RIM; lstm/gru/ff get num_units x hidden_size (same total state)"
    )
    num_units: int = option(6, "number of RIMs")
    k: int = option(4, "active RIMs per step (1..num_units)")
    cell: str = option("lstm", "cell of each RIM", CELLS)
    input_heads: int = option(1, "input attention heads")
    input_key_size: int = option(32, "input attention key size per head")
    input_value_size: int | None = option(
        None, "input attention value size per head (none: 4 x hidden_size, as the paper)"
    )
    comm_heads: int = option(4, "communication attention heads")
    comm_key_size: int = option(32, "communication key size per head")
    comm_value_size: int = option(32, "communication value size per head")
    comm_gate: bool = option(
        True,
        "RIMs communication output gated and tanh-bounded, as the authors' code (keeps the "
        "state bounded); --no-comm-gate: a linear output, whose states can blow up",
    )
    attention_dropout: float = option(
        0.0, "dropout on both RIMs attentions (paper 0.1; off for PPO: it makes ratios noisy)"
    )
    encoder: str = option(
        "auto",
        "observation encoder (auto: Minigrid CNN, MLP, or Nature CNN for images; minigrid-cells: "
        "Minigrid's view at full size, no pooling)",
        ENCODERS,
    )
    rims_spatial: bool = option(
        False,
        "RIMs read a set of positions, the CNN feature map or Minigrid's view cells "
        "(input attention picks where)",
    )
    centre_features: bool = option(
        False,
        "subtract from the encoder's features their running mean, re-estimated after each "
        "update, so that RIMs' input attention scores what tells observations apart (their "
        "shared part can fix which RIMs are active); off: the paper's",
    )
    centre_keep_size: bool = option(
        False,
        "with --centre-features: multiply the centred features by a running factor that gives "
        "them the raw features' mean size (centring alone shrinks them, which slows learning)",
    )
    selection_balance: float = option(
        0.0,
        "RIMs: weight of a load-balancing loss on the top-k selection (the Switch Transformer's) "
        "that moves input attention from the RIMs active most to the others; 0: off, the paper's",
    )
    mission: bool | None = option(
        None,
        "Minigrid: the policy reads the mission text (embedded words, a convolution over each "
        "three-word window); none: where the env's missions vary (Fetch, GoTo*, PutNear, "
        "BabyAI; not DoorKey)",
    )
    rims_bf16: bool = option(
        False,
        "RIMs compute their large state-independent matmuls (input projections, value-gate "
        "products, sequence weight gradients) in bfloat16; the recurrence stays float32",
    )
    rims_compile: bool = option(
        False,
        "torch.compile the acting step and each RIMs step, forward and backward (compiling "
        "takes 10-30 s at start; eager where it fails)",
    )
    rims_triton: bool = option(
        False,
        "experimental: on CUDA, run each RIMs step, forward and backward, as hand-written Triton "
        "kernels (needs Triton, one input head, no dropout, no --rims-spatial); elsewhere the "
        "usual steps run, after a warning",
    )
    rims_graphs: bool = option(
        True,
        "on CUDA, replay the RIMs core's forward and backward from CUDA graphs, one capture per "
        "input shape (no effect on the CPU or for other cores)",
    )
    # --- Atari
    frame_stack: int = option(1, "Atari: frames stacked per observation (1: memory is the core's)")
    sticky_actions: float = option(0.25, "Atari: probability the previous action repeats")
    full_action_space: bool = option(False, "Atari: all 18 actions (needed to evaluate on modes)")
    max_episode_frames: int = option(108_000, "Atari: emulator frames before an episode is cut")
    clip_rewards: bool = option(False, "learn from the sign of rewards (returns stay unclipped)")
    episodic_life: bool = option(
        False, "Atari: a lost life cuts the value target (the episode and the memory go on)"
    )
    # --- logging and checkpoints
    checkpoint_every: int = option(
        10, "write a checkpoint every this many updates (and at the end)"
    )
    keep_checkpoints: int = option(3, "numbered checkpoints kept besides latest and best")
    progress: bool = option(True, "show a progress bar")
    image_every: int = option(
        10, "write the RIMs activation image (mechanisms x time) every this many updates (0: off)"
    )
    eval_every: int = option(
        0,
        "evaluate the policy every this many updates (and after the last) on the training env "
        "(eval/return, which chooses best.pt) and --eval-suite's rows, logged as eval/... "
        "(0: never)",
    )
    eval_episodes: int = option(32, "episodes per env and shift in each --eval-every evaluation")
    eval_suite: str | None = option(
        None,
        "a suite whose rows --eval-every evaluates too, as rims eval --suite takes it (a "
        "built-in name, atari-modes or a JSON file; $RUN is the training env)",
    )
    torch_threads: int = option(0, "torch CPU threads (0: torch's default)")
    detect_anomaly: bool = option(False, "torch autograd anomaly detection (slow; for NaN hunts)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # a tuple field is a list where read back from JSON
            if isinstance(f.default, tuple) and isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        validate(self)

    # --- derived values
    @property
    def family(self) -> str:
        return env_family(self.env)

    @property
    def train_shifts(self) -> tuple[tuple[str, str], ...]:
        """``shift`` parsed: ``(("size", "5,6"),)``."""
        return tuple(parse_shift(text) for text in self.shift)

    @property
    def other_shifts(self) -> tuple[tuple[str, str], ...]:
        """``other_shift`` parsed, as ``train_shifts``."""
        return tuple(parse_shift(text) for text in self.other_shift)

    @property
    def share_schedule(self) -> Schedule | None:
        """``shift_schedule`` parsed (None without one)."""
        return None if self.shift_schedule is None else Schedule.parse(self.shift_schedule)

    @property
    def train_row(self) -> SuiteRow:
        """What the run trains on: its env with its shifts (a mixture where a shift lists
        several values)."""
        return SuiteRow(self.env, self.train_shifts)

    @property
    def other_row(self) -> SuiteRow:
        """What a ``--shift-schedule`` plays in the episodes it does not give to ``--shift``:
        the env with its ``--other-shift``, the env alone without one."""
        return SuiteRow(self.env, self.other_shifts)

    @property
    def target_row(self) -> SuiteRow:
        """What the run learns to play, and what evaluation plays unless told otherwise
        (``eval/return``, ``rims eval RUN``): ``train_row``, or ``other_row`` where
        ``--shift-schedule`` ends at a share of 0, a curriculum that moves the run onto the
        env's own levels (or its ``--other-shift``). A schedule that ends above 0 still trains
        on its shifts to the end, and they stay the target."""
        schedule = self.share_schedule
        if schedule is not None and schedule.values[-1] == 0:
            return self.other_row
        return self.train_row

    @property
    def batch_size(self) -> int:
        """Steps per rollout, all envs together."""
        return self.num_envs * self.num_steps

    @property
    def sequence_length(self) -> int:
        """Length of one training sequence: ``bptt``, or the whole rollout when ``bptt`` is 0
        or not shorter than it."""
        return min(self.bptt, self.num_steps) if self.bptt else self.num_steps

    @property
    def num_sequences(self) -> int:
        """Training sequences per rollout."""
        return self.num_envs * (self.num_steps // self.sequence_length)

    def policy_spec(self) -> PolicySpec:
        return PolicySpec(
            core=self.core,
            feature_size=self.feature_size,
            hidden_size=self.hidden_size,
            num_units=self.num_units,
            k=self.k,
            cell=self.cell,
            input_heads=self.input_heads,
            input_key_size=self.input_key_size,
            input_value_size=self.input_value_size,
            comm_heads=self.comm_heads,
            comm_key_size=self.comm_key_size,
            comm_value_size=self.comm_value_size,
            comm_gate=self.comm_gate,
            dropout=self.attention_dropout,
            encoder=self.encoder,
            spatial=self.rims_spatial,
            bf16_matmuls=self.rims_bf16,
            centre_features=self.centre_features,
            centre_keep_size=self.centre_keep_size,
        )

    @property
    def reads_mission(self) -> bool:
        """Whether the policy reads Minigrid's mission (``mission``, or where it is None, whether
        the env's missions vary)."""
        if self.mission is not None:
            return self.mission
        return self.family == "minigrid" and missions_vary(self.env)

    def env_kwargs(self) -> dict[str, Any]:
        """What the env factory needs beyond the id (Atari settings; Minigrid's mission where
        the policy reads it; nothing for others)."""
        if self.family == "minigrid" and self.reads_mission:
            return {"mission": True}
        if self.family != "atari":
            return {}
        return {
            "frame_stack": self.frame_stack,
            "repeat_action_probability": self.sticky_actions,
            "full_action_space": self.full_action_space,
            "max_episode_frames": self.max_episode_frames,
        }

    def default_run_dir(self) -> str:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.env)
        return f"runs/{name}__{self.core}__s{self.seed}__{time.strftime('%Y%m%d-%H%M%S')}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from ``to_dict`` output; unknown keys are an error (a foreign file)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}")
        return cls(**saved_fields(data))


def saved_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config with every field: those it lacks (it was saved before they existed) take
    the value they had before (``SAVED_BEFORE_FIELD``), else their default, as ``from_dict``
    reads them."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {**defaults, **SAVED_BEFORE_FIELD, **data}


NOT_LEARNED = frozenset({
    "run_dir", "resume", "overwrite", "device", "progress", "torch_threads", "detect_anomaly",
    "env_timeout", "checkpoint_every", "keep_checkpoints", "image_every", "rims_compile",
    "rims_triton", "rims_graphs", "total_steps", "eval_every", "eval_episodes", "eval_suite",
})  # fmt: skip
"""Settings that change how a run is carried out, kept or shown, not what it learns (the speed
flags change float rounding at most): a resumed run may change them, and ``rims plot`` pools
runs that differ only in them and the seed. ``total_steps`` is one so that a run can be
extended when resumed and runs of different lengths pooled."""

MAX_SEED = 2**62  # torch seeds are int64: a seed plus the offsets added to it must fit
SEED_RANGE = "0..2^62"

HELP_SECTIONS: dict[str, str] = {
    "env": "run",
    "num_envs": "rollout and PPO",
    "feature_size": "policy (every core)",
    "num_units": "RIMs (--core rims)",
    "encoder": "observations, features and the selection",
    "rims_bf16": "speed (RIMs)",
    "frame_stack": "Atari and rewards",
    "checkpoint_every": "logging, checkpoints, evaluation, threads",
}
"""The first ``TrainConfig`` field of each run of fields, and the title ``rims train --help``
shows above the run (the fields' order in the class is the order in the help)."""

PRESETS: dict[str, dict[str, Any]] = {
    # The field defaults plus 32-step chunks make the Minigrid preset (solves DoorKey-5x5 on a
    # laptop CPU). RIMs' hard top-k can flip which mechanisms are active after a small weight
    # change; the KL stop (target_kl 0.02) keeps such updates from wrecking the policy. Chunks
    # give 16 sequences per minibatch instead of 4 whole env columns: RIMs learnt in 3 of 3
    # seeds instead of 2, in about half the time (measured: bench/RESULTS.md). Entropy 0.02, not
    # 0.01: DoorKey's reward is sparse, and while no episode succeeds the normalised advantages
    # are value noise that still sharpens the policy; twice the bonus keeps it exploring until
    # the key and door are found (seeds 13-28: RIMs reached 0.9 in 14 of 16 instead of 11, the
    # LSTM in 16 instead of 15). The advantage floor (0.02) goes at that drift's cause: value
    # noise (std 0.003-0.011 here) is no longer scaled up to unit size, while a minibatch holding
    # a success (std 0.03-0.09) is normalised as before. RIMs then reached 0.9 in 20 of 20 seeds
    # (1-4, 13-28) instead of 19, median 118k steps on 13-28 instead of 156k; the LSTM in 20 of 20.
    "minigrid": {"bptt": 32, "ent_coef": 0.02, "adv_std_floor": 0.02},
    # Classic-control style envs (CartPole, rims/CueMemory-v0): CleanRL's defaults.
    "gym": {
        "num_envs": 8,
        "num_steps": 64,
        "learning_rate": 2.5e-4,
        "ent_coef": 0.0,
        "target_kl": None,
    },
    # CleanRL's Atari PPO settings; RIMs sized as the paper's Atari runs (6 RIMs x 100).
    "atari": {
        "total_steps": 10_000_000,
        "num_envs": 8,
        "num_steps": 128,
        "num_minibatches": 4,
        "update_epochs": 4,
        "learning_rate": 2.5e-4,
        "clip_coef": 0.1,
        "ent_coef": 0.01,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "feature_size": 512,
        "hidden_size": 100,
        "input_key_size": 64,
        "clip_rewards": True,
        "episodic_life": True,
        "checkpoint_every": 50,
        "target_kl": None,
    },
}


def resolve_config(given: dict[str, Any]) -> TrainConfig:
    """Field defaults, then the env family's preset, then what the user gave; ``mission``
    resolved, so that the saved config says whether the policy reads it."""
    env = given.get("env", TrainConfig.__dataclass_fields__["env"].default)
    config = TrainConfig(**{**PRESETS[env_family(env)], **given})
    return dataclasses.replace(config, mission=config.reads_mission)


ATARI_ONLY = ("frame_stack", "sticky_actions", "full_action_space", "max_episode_frames",
              "episodic_life")  # fmt: skip
"""The settings only an Atari env reads (``TrainConfig.env_kwargs`` and its lives)."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_device_name(name: str) -> None:
    """``ConfigError`` unless ``name`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if name not in ("auto", "cpu", "cuda") and re.fullmatch(r"cuda:\d+", name) is None:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


def validate(c: TrainConfig) -> None:
    """Raise ``ConfigError`` (one line, naming the flag) for any impossible setting."""
    validate_sizes(c)
    validate_core(c)
    validate_ppo(c)
    validate_run(c)
    validate_env(c)


def validate_sizes(c: TrainConfig) -> None:
    """Every field of its type, and the counts and sizes positive; the seed in range."""
    if (mismatch := type_mismatch(c)) is not None:
        name, problem = mismatch
        raise ConfigError(f"--{name.replace('_', '-')} {problem}")
    positive = [
        "total_steps", "num_envs", "num_steps", "num_minibatches", "update_epochs",
        "feature_size", "hidden_size", "num_units", "input_heads", "input_key_size",
        "comm_heads", "comm_key_size", "comm_value_size", "checkpoint_every",
    ]  # fmt: skip
    for name in positive:  # integers already (the type check above)
        value = getattr(c, name)
        _check(value >= 1, f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    _check(0 <= c.seed <= MAX_SEED, f"--seed must be an integer in {SEED_RANGE}, got {c.seed}")
    _check(
        c.input_value_size is None or c.input_value_size >= 1,
        f"--input-value-size must be a positive integer or none, got {c.input_value_size!r}",
    )


def validate_core(c: TrainConfig) -> None:
    """The core, its cell, and the flags that only some cores take."""
    _check(c.core in CORES, f"--core must be one of {', '.join(CORES)}, got {c.core!r}")
    _check(c.cell in CELLS, f"--cell must be one of {', '.join(CELLS)}, got {c.cell!r}")
    if c.core == "rims":
        _check(
            1 <= c.k <= c.num_units,
            f"--k must be in 1..num_units={c.num_units}, got {c.k}",
        )
    _check(
        not c.rims_spatial or c.core == "rims",
        "--rims-spatial needs --core rims (LSTM/GRU read one flat vector)",
    )
    _check(not c.rims_bf16 or c.core == "rims", "--rims-bf16 needs --core rims")
    _check(
        not c.centre_keep_size or c.centre_features,
        "--centre-keep-size rescales centred features; it needs --centre-features",
    )
    _check(
        math.isfinite(c.selection_balance) and c.selection_balance >= 0,
        f"--selection-balance must be a finite number >= 0, got {c.selection_balance}",
    )
    if c.selection_balance:
        _check(c.core == "rims", "--selection-balance needs --core rims")
        _check(c.k < c.num_units, f"--selection-balance needs --k below --num-units={c.num_units}"
               f" (with k={c.k} every RIM is always active)")  # fmt: skip
    _check(not c.rims_compile or c.core == "rims", "--rims-compile needs --core rims")
    _check(not c.rims_triton or c.core == "rims", "--rims-triton needs --core rims")
    if c.rims_triton and c.core == "rims":
        problem = triton_unsupported(c.input_heads, c.attention_dropout)
        _check(problem is None, f"--rims-triton: {problem}")
        _check(not c.rims_spatial, "--rims-triton: the kernels read one input element, not a set")


def validate_ppo(c: TrainConfig) -> None:
    """The rollout's split into training sequences and minibatches, and PPO's coefficients."""
    _check(c.bptt >= 0, f"--bptt must be >= 0, got {c.bptt}")
    _check(
        c.num_steps % c.sequence_length == 0,
        f"--num-steps={c.num_steps} must be a multiple of --bptt={c.bptt} "
        "(or --bptt 0 for whole rollouts)",
    )
    _check(
        c.num_sequences % c.num_minibatches == 0,
        f"--num-minibatches={c.num_minibatches} must divide the {c.num_sequences} training "
        f"sequence{'s' if c.num_sequences != 1 else ''} per rollout (num_envs x num_steps / bptt)",
    )
    _check(c.learning_rate > 0, f"--learning-rate must be > 0, got {c.learning_rate}")
    _check(0 < c.gamma <= 1, f"--gamma must be in (0, 1], got {c.gamma}")
    _check(0 <= c.gae_lambda <= 1, f"--gae-lambda must be in [0, 1], got {c.gae_lambda}")
    _check(c.clip_coef > 0, f"--clip-coef must be > 0, got {c.clip_coef}")
    _check(c.max_grad_norm > 0, f"--max-grad-norm must be > 0, got {c.max_grad_norm}")
    _check(
        math.isfinite(c.adv_std_floor) and c.adv_std_floor >= 0,
        f"--adv-std-floor must be a finite number >= 0, got {c.adv_std_floor}",
    )
    _check(c.ent_coef >= 0 and c.vf_coef >= 0, "--ent-coef and --vf-coef must be >= 0")
    _check(
        0 <= c.attention_dropout < 1,
        f"--attention-dropout must be in [0, 1), got {c.attention_dropout}",
    )
    _check(c.target_kl is None or c.target_kl > 0, "--target-kl must be > 0 or none")


def validate_run(c: TrainConfig) -> None:
    """Checkpoints, logging, evaluation during training, threads, device, resume."""
    _check(c.keep_checkpoints >= 0, "--keep-checkpoints must be >= 0")
    _check(c.image_every >= 0, "--image-every must be >= 0")
    _check(c.eval_every >= 0, f"--eval-every must be >= 0, got {c.eval_every}")
    _check(c.eval_episodes >= 1, f"--eval-episodes must be >= 1, got {c.eval_episodes}")
    _check(
        c.eval_suite is None or c.eval_every > 0,
        "--eval-suite needs --eval-every N (how often to evaluate)",
    )
    _check(c.torch_threads >= 0, "--torch-threads must be >= 0")
    _check(c.env_timeout >= 0, f"--env-timeout must be >= 0, got {c.env_timeout}")
    check_device_name(c.device)
    _check(not (c.resume and c.overwrite), "--resume and --overwrite exclude each other")


def validate_env(c: TrainConfig) -> None:
    """The env id, its shifts and schedule, and the flags that only some envs take."""
    _check(c.frame_stack >= 1, f"--frame-stack must be a positive integer, got {c.frame_stack}")
    _check(c.max_episode_frames >= 1, "--max-episode-frames must be a positive integer")
    _check(
        0 <= c.sticky_actions <= 1, f"--sticky-actions must be in [0, 1], got {c.sticky_actions}"
    )
    check_env_id(c.env)  # EnvError: unknown ids fail before anything is built or written
    for flag, field in (("--shift", "train_shifts"), ("--other-shift", "other_shifts")):
        try:  # parsing the shifts raises ShiftError too
            for combination in combinations(getattr(c, field)):
                shift_effect(c.env, c.family, combination)
        except ShiftError as err:
            raise ConfigError(f"{flag}: {err}") from None
    _check(
        not c.other_shift or c.shift_schedule is not None,
        "--other-shift needs --shift-schedule (which shares episodes out between the two)",
    )
    _check(
        c.schedule_after_return is None or c.shift_schedule is not None,
        "--schedule-after-return needs --shift-schedule (whose start it delays)",
    )
    _check(
        c.schedule_after_return is None or math.isfinite(c.schedule_after_return),
        f"--schedule-after-return must be a finite number, got {c.schedule_after_return}",
    )
    if c.shift_schedule is not None:
        _check(bool(c.shift), "--shift-schedule needs --shift (the shifts it shares out)")
        try:
            Schedule.parse(c.shift_schedule)
        except ScheduleError as err:
            raise ConfigError(f"--shift-schedule {err}") from None
    _check(
        not c.mission or c.family == "minigrid",
        f"--mission reads Minigrid's mission text; {c.env} has none",
    )
    if c.family != "atari":  # an Atari flag given for another env would be silently ignored
        fields = TrainConfig.__dataclass_fields__
        for name in ATARI_ONLY:
            _check(
                getattr(c, name) == fields[name].default,
                f"--{name.replace('_', '-')} applies to Atari envs only, not {c.env}",
            )
