"""Observation encoders: dict of ``(T, B, ...)`` tensors -> ``(T, B, feature_size)`` features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX
from torch import Tensor, nn

from policies.spec import ENCODERS

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

    ``cells``: two 3x3 convolutions that keep the view's size instead (32, then ``feature_size``
    channels: one vector per view cell that also sees its neighbours), flattened with the
    direction into the linear layer (the encoder ``minigrid-cells``).

    ``spatial``: those cell vectors as a set instead (RIMs' input attention picks which cells to
    read), each plus a learned embedding of its position and one of the agent's direction
    -> ``(T, B, H*W, feature_size)``.

    ``mission`` (the number of word indices): the observation's ``mission`` words are read too
    (``MissionEncoder``): its features join the linear layer's input, or, for a set, are
    projected and added to every cell like the direction.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        feature_size: int = 64,
        spatial: bool = False,
        cells: bool = False,
        mission: int | None = None,
    ) -> None:
        super().__init__()
        height, width, channels = image_shape
        if channels != len(CHANNEL_SIZES):
            raise ValueError(f"Minigrid image must have 3 channels, got shape {image_shape}")
        self.register_buffer(
            "offsets", torch.tensor([0, CHANNEL_SIZES[0], CHANNEL_SIZES[0] + CHANNEL_SIZES[1]])
        )
        self.num_codes = sum(CHANNEL_SIZES)
        self.spatial = spatial
        self.feature_size = feature_size
        if spatial or cells:
            self.cnn = nn.Sequential(
                nn.Conv2d(self.num_codes, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, feature_size, 3, padding=1),
                nn.ReLU(),
            )
        else:
            self.cnn = nn.Sequential(
                nn.Conv2d(self.num_codes, 16, 2),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 2),
                nn.ReLU(),
                nn.Conv2d(32, 64, 2),
                nn.ReLU(),
            )
        self.mission = None if mission is None else MissionEncoder(mission)
        if spatial:
            self.num_elements = height * width
            self.position = nn.Parameter(torch.randn(height * width, feature_size) * 0.02)
            self.direction = nn.Parameter(torch.randn(4, feature_size) * 0.02)
            if self.mission is not None:
                self.mission_to_cells = nn.Linear(MissionEncoder.size, feature_size)
            return
        # The pooled CNN: 2x2 conv, 2x2 pool, 2x2 conv, 2x2 conv take 7 -> 6 -> 3 -> 2 -> 1.
        if not cells and min(height, width) < 7:
            raise ValueError(
                f"the Minigrid CNN reads views of 7 x 7 cells or more, not {height} x {width} "
                "(--encoder minigrid-cells reads any size)"
            )
        with torch.no_grad():
            flat = self.cnn(torch.zeros(1, self.num_codes, height, width)).flatten(1).shape[1]
        mission_size = 0 if self.mission is None else MissionEncoder.size
        self.linear = nn.Linear(flat + 4 + mission_size, feature_size)

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        """image ``(T, B, H, W, 3)`` uint8, direction ``(T, B)`` -> ``(T, B, feature_size)``,
        or ``(T, B, H*W, feature_size)`` when spatial."""
        T, B = _leading(obs)
        image = obs["image"].long().clamp_min(0) + self.offsets  # (T,B,H,W,3) codes in 0..19
        # The three codes of a cell lie in disjoint ranges: a multi-hot of 3 ones per cell,
        # written straight as float (a one_hot per code, summed, moved 6x the memory).
        hot = image.new_zeros(*image.shape[:-1], self.num_codes, dtype=torch.float32)
        hot.scatter_(-1, image, 1.0)  # (T,B,H,W,3) codes -> (T,B,H,W,20)
        image = hot.flatten(0, 1).permute(0, 3, 1, 2)  # (T,B,H,W,20) -> (T*B, 20, H, W)
        # (T,B,L) word indices -> (T*B, MissionEncoder.size)
        mission = None if self.mission is None else self.mission(obs["mission"].flatten(0, 1))
        if self.spatial:
            maps = self.cnn(image)  # (T*B, F, H, W)
            elements = maps.flatten(2).transpose(1, 2)  # (T*B, F, H, W) -> (T*B, H*W, F)
            facing = self.direction[obs["direction"].long().flatten()]  # (T,B) -> (T*B, F)
            elements = elements + self.position + facing.unsqueeze(1)
            if mission is not None:  # (T*B, F) -> (T*B, 1, F), added to every cell
                elements = elements + self.mission_to_cells(mission).unsqueeze(1)
            return elements.view(T, B, self.num_elements, -1)  # -> (T, B, H*W, F)
        direction = F.one_hot(obs["direction"].long().flatten(), 4).float()  # (T,B) -> (T*B, 4)
        maps = self.cnn(image).flatten(1)  # (T*B, c, h, w) -> (T*B, flat)
        parts = (maps, direction) if mission is None else (maps, direction, mission)
        features = torch.cat(parts, dim=-1)  # (T*B, flat + 4 [+ MissionEncoder.size])
        return torch.relu(self.linear(features)).view(T, B, -1)  # (T*B, F) -> (T, B, F)


class MissionEncoder(nn.Module):
    """Mission word indices ``(N, max_words)`` in ``0..num_tokens-1`` (0 pads) -> features
    ``(N, size)`` (``envs.mission``).

    Each word is embedded; a convolution reads every window of three words, and each feature
    is its maximum over the mission's windows (a text CNN, as Kim 2014). Where a phrase stands
    does not matter ("get a blue key" and "you must fetch a blue key" share "a blue key"), the
    order within it does ("the red ball next to the blue key" is not its converse), and it is
    one convolution, not a GRU's step per word, so reading the mission at every step is cheap.
    """

    embedding_size = 32
    size = 64
    distinct_above = 64  # batches of more rows encode each distinct mission once

    def __init__(self, num_tokens: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, self.embedding_size, padding_idx=0)
        self.conv = nn.Conv1d(self.embedding_size, self.size, kernel_size=3, padding=1)

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = tokens.long()
        if tokens.shape[0] <= self.distinct_above:
            return self._encode(tokens)
        # A training batch repeats a few missions (one per episode) hundreds of times: encode
        # each distinct one once. (D distinct rows; acting batches are small and skip this.)
        distinct, inverse = torch.unique(tokens, dim=0, return_inverse=True)  # (D, L), (N,)
        return self._encode(distinct)[inverse]  # (D, size) -> (N, size)

    def _encode(self, tokens: Tensor) -> Tensor:
        words = self.embedding(tokens).transpose(1, 2)  # (N, L) -> (N, L, E) -> (N, E, L)
        windows = torch.relu(self.conv(words))  # (N, E, L) -> (N, size, L), one per word
        present = (tokens != 0).unsqueeze(1)  # (N, L) -> (N, 1, L): padding reads as 0
        return (windows * present).amax(dim=-1)  # (N, size, L) -> (N, size)


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


def _orthogonal(module: nn.Module, gain: float = math.sqrt(2)) -> nn.Module:
    """CleanRL's init for conv and linear layers."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)
    return module


class _ImageEncoder(nn.Module):
    """Shared body: ``(T, B, C, H, W)`` uint8 -> trunk -> flat features or a set of positions.

    Flat: the trunk's output flattened and a linear layer with ReLU -> ``(T, B, feature_size)``.
    Spatial: each position of the trunk's feature map is one element (its channels plus a
    learned position embedding) -> ``(T, B, H'*W', channels)``, for RIMs' input attention.
    """

    trunk: nn.Module

    def _finish(self, image_shape: tuple[int, ...], feature_size: int, spatial: bool) -> None:
        with torch.no_grad():
            channels, height, width = self.trunk(torch.zeros(1, *image_shape)).shape[1:]
        self.spatial = spatial
        self.num_elements = height * width
        if spatial:
            self.position = nn.Parameter(torch.zeros(height * width, channels))
            nn.init.normal_(self.position, std=0.02)
            self.feature_size = channels
        else:
            self.linear = _orthogonal(nn.Linear(channels * height * width, feature_size))
            self.feature_size = feature_size

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        """image ``(T, B, C, H, W)`` uint8 -> ``(T, B, F)`` or ``(T, B, N, channels)``."""
        T, B = _leading(obs)
        image = obs["image"].flatten(0, 1).float() / 255.0  # (T,B,C,H,W) -> (T*B,C,H,W)
        maps = self.trunk(image)  # (T*B, c, h, w)
        if self.spatial:
            elements = maps.flatten(2).transpose(1, 2)  # (T*B, c, h, w) -> (T*B, h*w, c)
            elements = elements + self.position
            return elements.view(T, B, self.num_elements, -1)  # -> (T, B, h*w, c)
        flat = torch.relu(self.linear(maps.flatten(1)))  # (T*B, c*h*w) -> (T*B, F)
        return flat.view(T, B, -1)  # (T*B, F) -> (T, B, F)


class NatureCNN(_ImageEncoder):
    """Mnih et al. (2015): conv 8x8/4 (32), 4x4/2 (64), 3x3/1 (64); 84x84 -> 7x7 positions."""

    def __init__(self, image_shape: tuple[int, ...], feature_size: int = 512,
                 spatial: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.trunk = _orthogonal(nn.Sequential(
            nn.Conv2d(image_shape[0], 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        ))  # fmt: skip
        self._finish(image_shape, feature_size, spatial)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaCNN(_ImageEncoder):
    """Espeholt et al. (2018): three stacks (16, 32, 32) of conv 3x3, max-pool 3x3/2 and two
    residual blocks; 84x84 -> 11x11 positions."""

    def __init__(self, image_shape: tuple[int, ...], feature_size: int = 256,
                 spatial: bool = False) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = []
        channels = image_shape[0]
        for out in (16, 32, 32):
            layers += [
                nn.Conv2d(channels, out, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1),
                _Residual(out),
                _Residual(out),
            ]
            channels = out
        layers.append(nn.ReLU())
        self.trunk = nn.Sequential(*layers)
        self._finish(image_shape, feature_size, spatial)


# The observation kind each encoder reads.
_READS = {"minigrid": "minigrid", "minigrid-cells": "minigrid", "mlp": "mlp", "nature": "image",
          "impala": "image"}  # fmt: skip


def make_encoder(
    observation_space: spaces.Dict, feature_size: int, kind: str = "auto", spatial: bool = False
) -> nn.Module:
    """The encoder for a dict observation space: Minigrid's symbolic view, a flat Box, or an
    image ``{"image": (C, H, W)}`` (Nature CNN by default, IMPALA CNN on request).
    ``spatial`` (image and Minigrid encoders) returns a set of positions instead of one vector."""
    if kind not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {kind!r}")
    keys = set(observation_space.spaces)
    if keys in ({"image", "direction"}, {"image", "direction", "mission"}):
        found = "minigrid"
    elif keys == {"obs"} and isinstance(observation_space["obs"], spaces.Box):
        found = "mlp"
    elif keys == {"image"} and len(observation_space["image"].shape) == 3:
        found = "image"
    else:
        raise ValueError(f"no encoder for observation space {observation_space}")
    if kind == "auto":
        kind = "nature" if found == "image" else found
    if _READS[kind] != found:
        raise ValueError(f"encoder {kind!r} does not fit observation space {observation_space}")
    if spatial and found not in ("image", "minigrid"):
        raise ValueError(
            "a spatial (set) input needs an image observation (CNN encoder) or Minigrid's view"
        )
    if kind in ("minigrid", "minigrid-cells"):
        cells, mission = kind == "minigrid-cells", None
        if "mission" in keys:  # (max_words,) word indices in 0..num_tokens-1
            mission = int(observation_space["mission"].high.max()) + 1
        return MinigridEncoder(
            observation_space["image"].shape, feature_size, spatial, cells, mission
        )
    if kind == "mlp":
        return MLPEncoder(observation_space["obs"].shape, feature_size)
    cnn = NatureCNN if kind == "nature" else ImpalaCNN
    return cnn(observation_space["image"].shape, feature_size, spatial)
