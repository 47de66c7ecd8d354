"""Centring the encoder's features on their running mean (``--centre-features``).

RIMs choose their active units by comparing each unit's input-attention score with the null
element's, which is exactly 0. The encoder's features end in a ReLU, so they share a large mean:
at initialisation on DoorKey-5x5 the mean feature vector is 1.3-1.8 times as long as the
features' typical deviation from it. The shared part adds the same term to a unit's score on
every step, and where it dominates, the unit is on (or off) whatever the observation: selection
does not switch. Subtracting the mean leaves only what tells observations apart.

The mean is not learned (top-k selection passes no gradient that would learn it). The trainer
re-estimates it after each update from the observations of the rollout just learned from, so
within a rollout acting and learning see the same function and the first PPO epoch recomputes the
log-probabilities it stored. The first rollout of a run is not centred: nothing is estimated yet.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Weight of the newest rollout's mean in the running mean: the encoder drifts as it learns,
# so the estimate follows it within a few updates.
MOMENTUM = 0.25


class FeatureCentring(nn.Module):
    """``(..., F)`` features minus a running mean ``(F,)`` that ``update`` moves."""

    def __init__(self, feature_size: int, momentum: float = MOMENTUM) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(feature_size))
        # Whether ``mean`` holds an estimate (saved with it, so a resumed run goes on averaging).
        self.register_buffer("estimated", torch.zeros((), dtype=torch.bool))

    def forward(self, features: Tensor) -> Tensor:
        return features - self.mean  # (..., F) - (F,) -> (..., F)

    @torch.no_grad()
    def update(self, batch_mean: Tensor) -> None:
        """Move the running mean towards ``batch_mean`` ``(F,)``; the first call sets it."""
        if batch_mean.shape != self.mean.shape:
            raise ValueError(f"batch mean of shape {tuple(batch_mean.shape)}, expected "
                             f"{tuple(self.mean.shape)}")  # fmt: skip
        if bool(self.estimated):
            self.mean.lerp_(batch_mean.to(self.mean), self.momentum)
        else:
            self.mean.copy_(batch_mean)
            self.estimated.fill_(True)

    def extra_repr(self) -> str:
        return f"{self.mean.numel()}, momentum={self.momentum}"
