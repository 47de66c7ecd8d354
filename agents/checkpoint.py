"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` only.

A checkpoint is a dict of plain values and tensors (never pickled objects) with a format tag and
version. It holds the full training config, so it alone rebuilds the policy and its env.
"""

from __future__ import annotations

import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents.atomic import atomic_output
from agents.errors import CheckpointError
from agents.flags import type_mismatch

FORMAT = "rims-rl-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file, fsync, rename, fsync of the dir).
    ``CheckpointError`` (one line, the file at ``path`` as it was) where it cannot be written:
    a full disk, no permission."""
    # Serialised in memory first: torch.save on a full disk says only "unexpected pos"; the
    # file's write says why.
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    try:
        with atomic_output(Path(path)) as tmp:
            tmp.write_bytes(buffer.getbuffer())
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}") from None


def _first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of ``err``'s message (at most ``limit`` characters), or its type's name
    when it has none: what a one-line ``CheckpointError`` quotes."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def _load_failure(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words: torch's own
    messages open with paragraphs of advice (load it unsafely, allowlist the class) that a
    rims-rl user must not follow, and name the one fact that matters further down."""
    text = str(err)
    unpickling = isinstance(err, pickle.UnpicklingError)
    found = re.search(r"GLOBAL ([\w.]+)", text) if unpickling else None  # what it would call
    if found:
        return f"it holds a Python object, {found[1]}, not only weights; not loaded"
    if isinstance(err, EOFError) or "failed finding central directory" in text:
        return "the file ends early: truncated or still being written"
    if unpickling or "not a ZIP archive" in text:
        return "not a torch checkpoint file"
    return _first_line(err)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely; raise ``CheckpointError`` with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or objects that are not plain weights
        raise CheckpointError(
            f"{path} is not a readable rims-rl checkpoint ({_load_failure(err)})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a rims-rl checkpoint")
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {data.get('version')!r}; "
            f"this rims-rl reads version {VERSION}"
        )
    return data


def load_latest(checkpoints: Path) -> dict[str, Any]:
    """``checkpoints/latest.pt`` for a resume. Where it is missing or unreadable the one-line
    ``CheckpointError`` names the newest readable numbered checkpoint, which a user may copy
    over it (resuming from an older one silently would repeat steps)."""
    try:
        return load_checkpoint(checkpoints / "latest.pt")
    except CheckpointError as err:
        for candidate in sorted(checkpoints.glob("step_*.pt"), reverse=True):  # newest first
            try:
                step = load_checkpoint(candidate)["global_step"]
            except (CheckpointError, KeyError):
                continue
            raise CheckpointError(
                f"{err}; the newest readable checkpoint is {candidate} (step {step:,}): copy it "
                "over latest.pt to resume from it"
            ) from None
        raise


def resolve_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint file, or a run directory's ``checkpoints/<which>.pt``."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / f"{which}.pt"
        if not candidate.is_file():
            raise CheckpointError(f"run directory {path} has no {which} checkpoint")
        return candidate
    if not path.exists():
        raise CheckpointError(f"no run directory or checkpoint file at {path}")
    return path


@dataclass
class LoadedPolicy:
    """A policy rebuilt from a checkpoint, with what it was trained on."""

    policy: Any  # policies.actor_critic.ActorCritic, in eval mode
    config: Any  # agents.config.TrainConfig
    checkpoint: dict[str, Any]
    path: Path
    observation_space: Any  # the training env's observation space

    @property
    def label(self) -> str:
        """The run directory's name, or the file's stem for a loose checkpoint."""
        if self.path.parent.name == "checkpoints":
            return self.path.parent.parent.name
        return self.path.stem


def load_policy(
    path: str | Path, which: str = "latest", device: str | torch.device = "cpu"
) -> LoadedPolicy:
    """Rebuild the policy a checkpoint (or run directory) holds, with no other input.

    ``CheckpointError`` (one line) if it is missing, unreadable or does not fit.
    """
    from agents.config import ConfigError, TrainConfig
    from envs.factory import EnvError, make_env
    from policies.actor_critic import ActorCritic
    from policies.spec import PolicySpec

    file = resolve_checkpoint(path, which)
    data = load_checkpoint(file)
    try:
        config = TrainConfig.from_dict(data["config"])
        env = make_env(config.env, shifts=config.train_shifts, **config.env_kwargs())
        observation_space = env.observation_space
        env.close()
        spec = PolicySpec.from_dict(data["policy_spec"])
        if (mismatch := type_mismatch(spec)) is not None:
            raise TypeError("policy spec field {} {}".format(*mismatch))
        policy = ActorCritic(observation_space, int(data["num_actions"]), spec)
        policy.load_state_dict(data["model"])
    except (KeyError, TypeError, RuntimeError, ConfigError, EnvError) as err:
        raise CheckpointError(f"{file} does not rebuild a policy ({_first_line(err)})") from None
    return LoadedPolicy(policy.to(device).eval(), config, data, file, observation_space)
