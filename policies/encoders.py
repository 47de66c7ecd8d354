"""Observation encoders: dict of ``(T, B, ...)`` tensors -> ``(T, B, feature_size)`` features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX
from torch import Tensor, nn

# Sizes of Minigrid's three symbolic channels (object, colour, state).
CHANNEL_SIZES = (len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX))


def _leading(obs: dict[str, Tensor]) -> tuple[int, int]:
    """The ``(T, B)`` leading dims shared by every entry of ``obs``."""
    first = next(iter(obs.values()))
    return first.shape[0], first.shape[1]


class MinigridEncoder(nn.Module):
    """Symbolic egocentric view + direction -> features.

    The three symbolic channels are one-hot encoded (11 objects + 6 colours + 3 states = 20
    channels), then the small CNN that Minigrid baselines use (torch-ac): conv 2x2 (16), max-pool,
    conv 2x2 (32), conv 2x2 (64); its flattened output and the one-hot direction go through a
    linear layer with ReLU.
    """

    def __init__(self, image_shape: tuple[int, int, int], feature_size: int = 64) -> None:
        super().__init__()
        height, width, channels = image_shape
        if channels != len(CHANNEL_SIZES):
            raise ValueError(f"Minigrid image must have 3 channels, got shape {image_shape}")
        self.register_buffer(
            "offsets", torch.tensor([0, CHANNEL_SIZES[0], CHANNEL_SIZES[0] + CHANNEL_SIZES[1]])
        )
        self.num_codes = sum(CHANNEL_SIZES)
        self.cnn = nn.Sequential(
            nn.Conv2d(self.num_codes, 16, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.cnn(torch.zeros(1, self.num_codes, height, width)).shape[1]
        self.linear = nn.Linear(flat + 4, feature_size)
        self.feature_size = feature_size

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        """image ``(T, B, H, W, 3)`` uint8, direction ``(T, B)`` -> ``(T, B, feature_size)``."""
        T, B = _leading(obs)
        image = obs["image"].long().clamp_min(0) + self.offsets  # (T,B,H,W,3) codes in 0..19
        image = F.one_hot(image, self.num_codes).sum(-2)  # (T,B,H,W,3) -> (T,B,H,W,20)
        image = image.flatten(0, 1).permute(0, 3, 1, 2).float()  # -> (T*B, 20, H, W)
        direction = F.one_hot(obs["direction"].long().flatten(), 4).float()  # (T,B) -> (T*B, 4)
        features = torch.cat((self.cnn(image), direction), dim=-1)  # (T*B, flat + 4)
        return torch.relu(self.linear(features)).view(T, B, -1)  # (T*B, F) -> (T, B, F)


class MLPEncoder(nn.Module):
    """A flat ``Box`` observation ``obs`` -> two tanh layers (the SB3/CleanRL MLP)."""

    def __init__(self, obs_shape: tuple[int, ...], feature_size: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(math.prod(obs_shape), feature_size),
            nn.Tanh(),
            nn.Linear(feature_size, feature_size),
            nn.Tanh(),
        )
        self.feature_size = feature_size

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        """obs ``(T, B, *shape)`` -> ``(T, B, feature_size)``."""
        x = obs["obs"].float().flatten(2)  # (T, B, *shape) -> (T, B, prod(shape))
        return self.net(x)


def make_encoder(observation_space: spaces.Dict, feature_size: int) -> nn.Module:
    """The encoder for a dict observation space (Minigrid's symbolic view, or a flat Box)."""
    keys = set(observation_space.spaces)
    if keys == {"image", "direction"}:
        return MinigridEncoder(observation_space["image"].shape, feature_size)
    if keys == {"obs"} and isinstance(observation_space["obs"], spaces.Box):
        return MLPEncoder(observation_space["obs"].shape, feature_size)
    raise ValueError(f"no encoder for observation space {observation_space}")
