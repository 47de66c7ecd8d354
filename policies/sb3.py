"""RIMs for Stable-Baselines3 users: policies for sb3-contrib's ``RecurrentPPO``.

``RecurrentPPO(RIMsPolicy, env, policy_kwargs={"rims_kwargs": {...}})`` swaps the policy's LSTMs
for ``policies.rims.RIMs`` cores (the same module ``rims train`` uses, not a second
implementation). sb3-contrib keeps recurrent states as ``(h, c)`` of shape
``(1, n_envs, hidden)``; a RIMs state ``(B, num_units, hidden_size)`` is stored flattened into
that shape (a GRU-cell RIMs carries a zero ``c``). Needs ``pip install rims-rl[sb3]``.
"""

from __future__ import annotations

from typing import Any

import torch
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.torch_layers import NatureCNN
from torch import Tensor, nn

from policies.rims import RIMs


class RIMsAsLSTM(nn.Module):
    """A RIMs core wearing the attributes sb3-contrib reads from its ``nn.LSTM``
    (``input_size``, ``hidden_size``, ``num_layers``); the policy calls ``run``."""

    num_layers = 1

    def __init__(self, input_size: int, **rims_kwargs: Any) -> None:
        super().__init__()
        self.rims = RIMs(input_size, **rims_kwargs)
        self.input_size = input_size
        self.hidden_size = self.rims.output_size
        self.last_mask: Tensor | None = None  # (T, B, num_units), for inspection

    def run(
        self, x: Tensor, states: tuple[Tensor, Tensor], episode_starts: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x ``(T, B, D)``; states ``(1, B, U*H)`` each; episode_starts ``(T, B)`` float."""
        B = x.shape[1]
        U, H = self.rims.num_units, self.rims.hidden_size
        state = tuple(s[0].reshape(B, U, H) for s in states)  # (1, B, U*H) -> (B, U, H)
        if self.rims.cell == "gru":
            state = state[:1]
        out, new, info = self.rims(x, state, episode_starts.bool())
        self.last_mask = info.mask
        packed = [s.reshape(1, B, U * H) for s in new]  # (B, U, H) -> (1, B, U*H)
        if self.rims.cell == "gru":
            packed.append(torch.zeros_like(packed[0]))
        return out, (packed[0], packed[1])


class RIMsPolicy(RecurrentActorCriticPolicy):
    """sb3-contrib's recurrent actor-critic with RIMs in place of its LSTMs.

    ``rims_kwargs`` go to ``policies.rims.RIMs`` (``num_units``, ``k``, ``hidden_size``,
    ``cell``, attention sizes, ``dropout``; default 6 RIMs x 64, 4 active, no dropout). The
    actor and the critic get one RIMs core each (sb3-contrib's ``enable_critic_lstm``), or
    share the actor's with ``shared_lstm=True``.
    """

    def __init__(self, *args: Any, rims_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        rims_kwargs = {"num_units": 6, "k": 4, "hidden_size": 64, "dropout": 0.0,
                       **(rims_kwargs or {})}  # fmt: skip
        kwargs["lstm_hidden_size"] = rims_kwargs["num_units"] * rims_kwargs["hidden_size"]
        kwargs["n_lstm_layers"] = 1
        super().__init__(*args, **kwargs)
        self.rims_kwargs = rims_kwargs
        self.lstm_actor = RIMsAsLSTM(self.features_dim, **rims_kwargs)
        if self.lstm_critic is not None:
            self.lstm_critic = RIMsAsLSTM(self.features_dim, **rims_kwargs)
        self.to(self.device)
        # The parent built its optimizer over the LSTMs it made; rebuild it over the RIMs.
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=self._initial_lr, **self.optimizer_kwargs
        )

    def _build(self, lr_schedule) -> None:
        self._initial_lr = lr_schedule(1)
        super()._build(lr_schedule)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["rims_kwargs"] = self.rims_kwargs
        data.pop("lstm_hidden_size", None)
        data.pop("n_lstm_layers", None)
        return data

    @staticmethod
    def _process_sequence(
        features: Tensor,
        lstm_states: tuple[Tensor, Tensor],
        episode_starts: Tensor,
        lstm: nn.Module,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """sb3-contrib's batch layout -> one RIMs call with its episode starts -> back.

        features ``(n_seq * L, D)`` (sequence-major, as sb3-contrib pads them), states
        ``(1, n_seq, U*H)``, episode_starts ``(n_seq * L,)``.
        """
        if not isinstance(lstm, RIMsAsLSTM):
            return RecurrentActorCriticPolicy._process_sequence(
                features, lstm_states, episode_starts, lstm
            )
        n_seq = lstm_states[0].shape[1]
        # (n_seq * L, D) -> (n_seq, L, D) -> (L, n_seq, D)
        sequence = features.reshape((n_seq, -1, lstm.input_size)).swapaxes(0, 1)
        starts = episode_starts.reshape((n_seq, -1)).swapaxes(0, 1)  # -> (L, n_seq)
        out, states = lstm.run(sequence, lstm_states, starts)
        return torch.flatten(out.transpose(0, 1), start_dim=0, end_dim=1), states  # (n_seq*L, .)


class RIMsCnnPolicy(RIMsPolicy):
    """``RIMsPolicy`` over image observations: SB3's Nature CNN as the features extractor."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("features_extractor_class", NatureCNN)
        super().__init__(*args, **kwargs)
