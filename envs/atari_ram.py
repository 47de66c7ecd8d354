"""Where the ball and the agent's paddle are in Breakout and Pong, read from the emulator's RAM.

The addresses are AtariARI's annotations (Anand et al. 2019, "Unsupervised State Representation
Learning in Atari", ``atariari/benchmark/ram_annotations.py``). The offsets that turn them into
pixels of the 210 x 160 screen were measured against ale-py's rendered frames; a test checks
them on fresh frames. The ball is "not in play" before a serve and once it has passed a paddle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Breakout: ball x and y, paddle x (its left edge). Pong: ball x and y, our (right) paddle's y.
_BREAKOUT_BALL_X, _BREAKOUT_BALL_Y, _BREAKOUT_PADDLE = 99, 101, 72
_PONG_BALL_X, _PONG_BALL_Y, _PONG_PADDLE = 49, 54, 51
# Pixels along the paddle's axis, in both games. Breakout halves its paddle once the ball has
# reached the top wall; the span read then is still 16 wide (the annotations give no width).
PADDLE_LENGTH = 16
BREAKOUT_OUT = 185  # Breakout's ball y (RAM) from which the ball has passed the paddle
# Screen rows and columns (pixels) the situations of agents.mechanisms are drawn by.
BREAKOUT_BRICKS_END = 93  # the first row below the bricks
BREAKOUT_PADDLE_TOP = 189  # the paddle's top row
PONG_MIDDLE = 80  # the column between the halves; ours (the right paddle's) is the right one
PONG_BETWEEN = (16, 143)  # the columns from the opponent's paddle to the back of ours


@dataclass(frozen=True)
class Scene:
    """One frame's ball and paddle, in screen pixels (x right, y down).

    ball: the ball's centre ``(x, y)``, None when not in play. paddle: the first and last pixel
    of our paddle along the axis it moves on (x in Breakout, y in Pong)."""

    game: str
    ball: tuple[float, float] | None
    paddle: tuple[int, int]


def has_scene(game: str) -> bool:
    """Whether ``scene`` reads this game (ale-py's ROM name: ``envs.atari.game_of``)."""
    return game in ("breakout", "pong")


def scene(game: str, ram: np.ndarray) -> Scene:
    """The ball and paddle of ``game`` (``has_scene``) from its 128-byte ``ram``."""
    ram = ram.astype(int)
    if game == "breakout":
        x, y = ram[_BREAKOUT_BALL_X], ram[_BREAKOUT_BALL_Y]
        left = ram[_BREAKOUT_PADDLE] - 47
        ball = (x - 48.5, y + 10.5) if 0 < y < BREAKOUT_OUT else None
        return Scene(game, ball, (left, left + PADDLE_LENGTH - 1))
    if game == "pong":
        x, y = ram[_PONG_BALL_X], ram[_PONG_BALL_Y]
        bottom = ram[_PONG_PADDLE] + 1
        ball = (x - 48.5, y - 12.5)
        if y == 0 or not PONG_BETWEEN[0] <= ball[0] <= PONG_BETWEEN[1]:
            ball = None  # not served yet, or a point is won
        return Scene(game, ball, (bottom - PADDLE_LENGTH + 1, bottom))
    raise ValueError(f"no RAM annotations for {game!r} (known: breakout, pong)")
