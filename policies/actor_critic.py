"""Actor-critic: encoder -> recurrent core -> policy and value heads, one forward path.

Acting (T=1) and learning (whole sequences) both go through ``ActorCritic.forward``, so the
log-probabilities recomputed at the first PPO epoch equal the ones stored while acting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from torch.distributions import Categorical

from policies.centring import FeatureCentring, FeatureMoments
from policies.compiled import CompiledStep
from policies.core import CoreInfo, State
from policies.encoders import make_encoder
from policies.rims import RIMs
from policies.rnn import FeedForwardCore, GRUCore, LSTMCore
from policies.spec import CORES, PolicySpec


def build_core(spec: PolicySpec, input_size: int) -> nn.Module:
    """The core named by ``spec.core``; raises ``ValueError`` for impossible sizes."""
    if spec.core == "rims":
        return RIMs(
            input_size,
            num_units=spec.num_units,
            k=spec.k,
            hidden_size=spec.hidden_size,
            cell=spec.cell,
            input_heads=spec.input_heads,
            input_key_size=spec.input_key_size,
            input_value_size=spec.input_value_size,
            comm_heads=spec.comm_heads,
            comm_key_size=spec.comm_key_size,
            comm_value_size=spec.comm_value_size,
            comm_gate=spec.comm_gate,
            dropout=spec.dropout,
            bf16_matmuls=spec.bf16_matmuls,
        )
    simple = {"lstm": LSTMCore, "gru": GRUCore, "ff": FeedForwardCore}
    if spec.core not in simple:
        raise ValueError(f"core must be one of {CORES}, got {spec.core!r}")
    return simple[spec.core](input_size, spec.state_size)


def _mlp_head(in_size: int, hidden: int, out_size: int, out_gain: float) -> nn.Sequential:
    head = nn.Sequential(nn.Linear(in_size, hidden), nn.Tanh(), nn.Linear(hidden, out_size))
    for layer, gain in ((head[0], np.sqrt(2)), (head[2], out_gain)):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return head


@dataclass
class PolicyOutput:
    """logits ``(T, B, A)``, values ``(T, B)``, the state after the sequence, the core's info."""

    logits: Tensor
    values: Tensor
    state: State
    info: CoreInfo

    @property
    def distribution(self) -> Categorical:
        return Categorical(logits=self.logits, validate_args=False)  # NaNs are caught per update


@dataclass
class ActResult:
    """One acting step for B envs: actions, log-probs and values ``(B,)``, the new state, info."""

    actions: Tensor
    logprobs: Tensor
    values: Tensor
    state: State
    info: CoreInfo


class ActTensors(NamedTuple):
    """``ActResult`` as plain tensors, which a compiled function can return: actions,
    log-probs, values ``(B,)``, the state, and the info's fields ``(1, B, ...)`` or None."""

    actions: Tensor
    logprobs: Tensor
    values: Tensor
    state: State
    mask: Tensor | None
    null_attention: Tensor | None
    input_attention: Tensor | None


class ActorCritic(nn.Module):
    """Encoder -> core -> (actor, critic). Discrete actions."""

    def __init__(self, observation_space: spaces.Dict, num_actions: int, spec: PolicySpec) -> None:
        super().__init__()
        self.spec = spec
        self.num_actions = num_actions
        self.encoder = make_encoder(
            observation_space, spec.feature_size, spec.encoder, spec.spatial
        )
        # Features minus their running mean, which the trainer estimates (--centre-features).
        self.centring = (
            FeatureCentring(self.encoder.feature_size, keep_size=spec.centre_keep_size)
            if spec.centre_features
            else None
        )
        self.core = build_core(spec, self.encoder.feature_size)
        out = self.core.output_size
        self.actor = _mlp_head(out, spec.head_hidden_size, num_actions, 0.01)
        self.critic = _mlp_head(out, spec.head_hidden_size, 1, 1.0)
        # Acting steps through torch.compile (a speed setting, not part of the spec).
        self.compile_act = False

    def replays_graphs(self, device: torch.device) -> bool:
        """Whether the core replays CUDA graphs (captured once per input shape) for inputs on
        ``device``."""
        return getattr(self.core, "cuda_graphs", False) and device.type == "cuda"

    @property
    def builds_per_batch(self) -> bool:
        """Whether acting runs code built for each batch size: a compiled acting step
        (``--rims-compile``) or a core replaying CUDA graphs; a new batch size builds it again."""
        return self.compile_act or self.replays_graphs(next(self.parameters()).device)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return self.core.initial_state(batch_size, device)

    def forward(self, obs: dict[str, Tensor], state: State, episode_starts: Tensor) -> PolicyOutput:
        """obs: dict of ``(T, B, ...)``; episode_starts ``(T, B)`` bool."""
        features = self.encoder(obs)  # (T, B, F), or (T, B, N, F) for a set
        if self.centring is not None:
            features = self.centring(features)
        out, state, info = self.core(features, state, episode_starts)  # (T, B, core out)
        logits = self.actor(out)  # (T, B, A)
        values = self.critic(out).squeeze(-1)  # (T, B, 1) -> (T, B)
        return PolicyOutput(logits, values, state, info)

    @torch.no_grad()
    def act(
        self,
        obs: dict[str, Tensor],
        state: State,
        episode_starts: Tensor,
        deterministic: bool = False,
    ) -> ActResult:
        """One step. obs: dict of ``(B, ...)``; episode_starts ``(B,)`` bool."""
        # A core that replays CUDA graphs here is replayed, not traced into a compiled step.
        replays = self.replays_graphs(episode_starts.device)
        step = _COMPILED_ACT if self.compile_act and not replays else ActorCritic._act_tensors
        r = step(self, obs, state, episode_starts, deterministic)
        info = CoreInfo(r.mask, r.null_attention, r.input_attention)
        return ActResult(r.actions, r.logprobs, r.values, r.state, info)

    def _act_tensors(
        self, obs: dict[str, Tensor], state: State, episode_starts: Tensor, deterministic: bool
    ) -> ActTensors:
        """``act`` as a pure function of tensors (compiled whole with ``compile_act``)."""
        seq = {k: v.unsqueeze(0) for k, v in obs.items()}  # (B, ...) -> (1, B, ...)
        out = self.forward(seq, state, episode_starts.unsqueeze(0))  # (B,) -> (1, B)
        dist = out.distribution
        actions = out.logits.argmax(-1) if deterministic else dist.sample()  # (1, B)
        info = out.info
        return ActTensors(actions[0], dist.log_prob(actions)[0], out.values[0], out.state,
                          info.mask, info.null_attention, info.input_attention)  # fmt: skip

    @torch.no_grad()
    def value(self, obs: dict[str, Tensor], state: State, episode_starts: Tensor) -> Tensor:
        """Values ``(B,)`` of one step of ``(B, ...)`` observations from ``state``."""
        seq = {k: v.unsqueeze(0) for k, v in obs.items()}  # (B, ...) -> (1, B, ...)
        return self.forward(seq, state, episode_starts.unsqueeze(0)).values[0]

    @torch.no_grad()
    def feature_moments(self, obs: dict[str, Tensor], chunk: int = 4096) -> FeatureMoments:
        """The encoder's mean feature ``(F,)`` and mean squared feature length ``()`` over
        observations ``(T, B, ...)`` (and a set's elements), uncentred; encoded ``chunk``
        observations at a time."""
        flat = {k: v.flatten(0, 1) for k, v in obs.items()}  # (T, B, ...) -> (T*B, ...)
        n = next(iter(flat.values())).shape[0]
        total, squares, count = 0.0, 0.0, 0
        for start in range(0, n, chunk):
            part = {k: v[start : start + chunk].unsqueeze(0) for k, v in flat.items()}  # (1,c,..)
            features = self.encoder(part)  # (1, c, F), or (1, c, N, F) for a set
            rows = features.reshape(-1, features.shape[-1])  # -> (c or c*N, F)
            total, count = total + rows.sum(0), count + rows.shape[0]
            squares = squares + rows.square().sum()
        return FeatureMoments(total / count, squares / count)


_COMPILED_ACT = CompiledStep(ActorCritic._act_tensors, "acting step")
