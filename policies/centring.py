"""Centring the encoder's features on their running mean (``--centre-features``).

RIMs choose their active units by comparing each unit's input-attention score with the null
element's, which is exactly 0. The encoder's features end in a ReLU, so they share a large mean:
at initialisation on DoorKey-5x5 the mean feature vector is 1.3-1.8 times as long as the
features' typical deviation from it. The shared part adds the same term to a unit's score on
every step, and where it dominates, the unit is on (or off) whatever the observation: selection
does not switch. Subtracting the mean leaves only what tells observations apart.

Subtracting it also shrinks the features (about 1.9 times at initialisation), and a smaller input
learns more slowly. With ``keep_size`` (``--centre-keep-size``) the centred features are
multiplied by a running factor that gives them the raw features' mean size:
``sqrt(E|x|^2 / E|x - m|^2)``, with ``E|x - m|^2 = E|x|^2 - |m|^2``.

Neither the mean nor the factor is learned (top-k selection passes no gradient that would learn
them). The trainer re-estimates both after each update from the observations of the rollout just
learned from, so within a rollout acting and learning see the same function and the first PPO
epoch recomputes the log-probabilities it stored. The first rollout of a run is not centred:
nothing is estimated yet.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

# Weight of the newest rollout's moments in the running ones: the encoder drifts as it learns,
# so the estimate follows it within a few updates.
MOMENTUM = 0.25

# The centred features' mean square is taken to be at least this fraction of the raw features',
# so the factor stays at most 1 / sqrt(MIN_SPREAD) = 10 where the features barely vary.
MIN_SPREAD = 0.01


class FeatureMoments(NamedTuple):
    """What the trainer measures of the encoder's features over a rollout."""

    mean: Tensor
    """``(F,)`` the mean feature vector."""
    mean_square: Tensor
    """``()`` the mean of a feature vector's squared length."""


class FeatureCentring(nn.Module):
    """``(..., F)`` features minus a running mean ``(F,)`` that ``update`` moves; with
    ``keep_size``, times a running factor ``()`` that restores their mean size."""

    def __init__(
        self, feature_size: int, momentum: float = MOMENTUM, keep_size: bool = False
    ) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.keep_size = keep_size
        self.register_buffer("mean", torch.zeros(feature_size))
        # Whether ``mean`` holds an estimate (saved with it, so a resumed run goes on averaging).
        self.register_buffer("estimated", torch.zeros((), dtype=torch.bool))
        if keep_size:  # only then, so checkpoints of plain centring load as they were saved
            self.register_buffer("mean_square", torch.zeros(()))
            self.register_buffer("scale", torch.ones(()))

    def forward(self, features: Tensor) -> Tensor:
        centred = features - self.mean  # (..., F) - (F,) -> (..., F)
        return centred * self.scale if self.keep_size else centred  # (..., F) * () -> (..., F)

    @torch.no_grad()
    def update(self, moments: FeatureMoments) -> None:
        """Move the running moments towards a rollout's; the first call sets them."""
        mean, mean_square = moments
        if mean.shape != self.mean.shape or mean_square.shape != ():
            raise ValueError(f"moments of shapes {tuple(mean.shape)} and "
                             f"{tuple(mean_square.shape)}, expected {tuple(self.mean.shape)} "
                             "and ()")  # fmt: skip
        first = not bool(self.estimated)
        weight = 1.0 if first else self.momentum
        self.mean.lerp_(mean.to(self.mean), weight)
        self.estimated.fill_(True)
        if self.keep_size:
            self.mean_square.lerp_(mean_square.to(self.mean_square), weight)
            self.scale.copy_(size_factor(self.mean, self.mean_square))

    def extra_repr(self) -> str:
        size = ", keep_size=True" if self.keep_size else ""
        return f"{self.mean.numel()}, momentum={self.momentum}{size}"


def size_factor(mean: Tensor, mean_square: Tensor) -> Tensor:
    """``()`` the factor that gives features of ``mean`` ``(F,)`` and mean squared length
    ``mean_square`` ``()`` their mean size back once centred: ``sqrt(E|x|^2 / E|x - m|^2)``."""
    if float(mean_square) <= 0.0:  # features that are all zero: nothing to restore
        return torch.ones_like(mean_square)
    spread = (mean_square - mean.square().sum()).clamp_min(MIN_SPREAD * mean_square)
    return (mean_square / spread).sqrt()


def mean_to_spread(moments: FeatureMoments) -> float:
    """How much longer the features' mean is than their typical deviation from it,
    ``|m| / sqrt(E|x - m|^2)`` (the diagnostic behind this module; at most ``sqrt(1 /
    MIN_SPREAD - 1)``): ``sqrt(f^2 - 1)`` for the size factor ``f`` of the same moments."""
    factor = float(size_factor(*moments))
    return max(factor * factor - 1.0, 0.0) ** 0.5
