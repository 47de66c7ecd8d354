"""Baseline cores behind the same interface as ``RIMs``: LSTM, GRU, and a memoryless one.

``LSTMCore`` and ``GRUCore`` wrap ``nn.LSTM`` / ``nn.GRU``. A sequence is cut at the steps where
any batch entry starts an episode; each piece runs as one cuDNN (or fused CPU) call, and at a cut
the state of the entries that start is zeroed. A rollout step (T=1) is one call; a learning
sequence is one call per piece. Finding the cuts needs one host sync per call, which the RIMs
core avoids but a wrapped ``nn.LSTM`` cannot (it has no per-step reset).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from policies.core import (
    CoreInfo,
    State,
    check_episode_starts,
    check_positive,
    check_sequence_input,
)


def segment_bounds(episode_starts: Tensor | None, time: int) -> list[int]:
    """Cut points ``[0, t1, ..., T]``: 0, every t > 0 where any entry starts, and T."""
    if episode_starts is None:
        return [0, time]
    cuts = episode_starts[1:].any(dim=1).nonzero().flatten().add(1).tolist()
    return [0, *cuts, time]


class _TorchRNNCore(nn.Module):
    """Shared body of ``LSTMCore`` / ``GRUCore``: segment-wise calls of a one-layer torch RNN."""

    rnn: nn.LSTM | nn.GRU

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        check_positive(input_size=input_size, hidden_size=hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size

    @property
    def _parts(self) -> int:
        return 2 if isinstance(self.rnn, nn.LSTM) else 1

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zeros: ``(h, c)`` for LSTM or ``(h,)`` for GRU, each ``(B, hidden_size)``."""
        weight = self.rnn.weight_hh_l0
        device = weight.device if device is None else device
        return tuple(
            torch.zeros(batch_size, self.hidden_size, device=device, dtype=weight.dtype)
            for _ in range(self._parts)
        )

    def forward(
        self, x: Tensor, state: State, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State, CoreInfo]:
        """x: ``(T, B, D)``; state: each ``(B, H)``; episode_starts: ``(T, B)`` bool or None.
        Returns ``out (T, B, H)``, the final state, and an empty ``CoreInfo``."""
        check_sequence_input(x, self.input_size, allow_set=False)
        T, B, _ = x.shape
        check_episode_starts(episode_starts, T, B)
        # public (B, H) -> torch RNN layout (num_layers=1, B, H)
        hs = [s.unsqueeze(0) for s in state]
        outs = []
        bounds = segment_bounds(episode_starts, T)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if episode_starts is not None:
                keep = (~episode_starts[start].bool()).to(x.dtype).view(1, B, 1)  # (B,) -> (1,B,1)
                hs = [s * keep for s in hs]
            out, new = self.rnn(x[start:stop], tuple(hs) if self._parts == 2 else hs[0])
            hs = list(new) if self._parts == 2 else [new]
            outs.append(out)
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # pieces (t_i, B, H) -> (T, B, H)
        return out, tuple(s.squeeze(0) for s in hs), CoreInfo()  # (1, B, H) -> (B, H)


class LSTMCore(_TorchRNNCore):
    """One-layer ``nn.LSTM`` with the core interface. State ``(h, c)``, each ``(B, H)``."""

    def __init__(self, input_size: int, hidden_size: int = 128) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.LSTM(input_size, hidden_size)


class GRUCore(_TorchRNNCore):
    """One-layer ``nn.GRU`` with the core interface. State ``(h,)``, ``(B, hidden_size)``."""

    def __init__(self, input_size: int, hidden_size: int = 128) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.GRU(input_size, hidden_size)


class FeedForwardCore(nn.Module):
    """A memoryless core (one linear layer + ReLU): the baseline that shows what memory buys.

    Its state is an empty tuple; ``episode_starts`` has nothing to reset.
    """

    def __init__(self, input_size: int, hidden_size: int = 128) -> None:
        super().__init__()
        check_positive(input_size=input_size, hidden_size=hidden_size)
        self.input_size = input_size
        self.output_size = hidden_size
        self.linear = nn.Linear(input_size, hidden_size)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The empty state ``()``."""
        return ()

    def forward(
        self, x: Tensor, state: State, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State, CoreInfo]:
        """x: ``(T, B, D)`` -> ``(T, B, hidden_size)``; the state stays ``()``."""
        check_sequence_input(x, self.input_size, allow_set=False)
        check_episode_starts(episode_starts, x.shape[0], x.shape[1])
        return torch.relu(self.linear(x)), (), CoreInfo()
