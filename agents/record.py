"""``rims record``: watch a checkpoint act, with a panel that shows what the core is doing.

Each frame is the env's ``rgb_array`` rendering (Minigrid: the full grid; upscaled to a watchable
size) with a panel beside it: the step, the action, the running return and, for RIMs, one strip
per mechanism (lit while active, with a bar for its attention on the input, i.e. 1 - its
attention on the null) and a mechanisms x time history of the last steps.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from agents.atomic import atomic_output
from agents.checkpoint import LoadedPolicy
from agents.report import env_kwargs_for
from agents.storage import obs_to_tensors
from envs.factory import CALL_SECONDS, env_errors, make_env, probe_resets

PANEL_WIDTH = 240
MIN_HEIGHT = 320
HISTORY = 48  # steps shown in the activation history
MISSION_CHARS, MISSION_LINES = 36, 3  # how the mission is wrapped at the panel's bottom
ACTIVE = (255, 170, 40)
INACTIVE = (60, 60, 70)
BACKGROUND = (20, 20, 28)
TEXT = (235, 235, 235)
BAR = (90, 180, 255)
SUFFIXES = (".gif", ".mp4")


@dataclass
class StepView:
    """What the panel shows for one frame."""

    step: int
    episode: int
    action: str
    episode_return: float
    mask: np.ndarray | None = None  # (U,) bool
    input_attention: np.ndarray | None = None  # (U,) float, 1 - null attention
    position_attention: np.ndarray | None = None  # (U, N) over a set of N = side^2 positions
    mission: str | None = None  # Minigrid's mission text
    final: bool = False  # the episode's last frame: no action is taken from it
    cut: bool = False  # ... because the episode reached the step limit, not its end


@dataclass
class Recording:
    frames: list[np.ndarray] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    views: list[StepView] = field(default_factory=list)


def upscale(frame: np.ndarray, min_height: int = MIN_HEIGHT) -> np.ndarray:
    """Nearest-neighbour upscale by an integer factor to at least ``min_height`` rows."""
    factor = max(1, -(-min_height // frame.shape[0]))
    return np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


def fit(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``frame`` scaled (nearest neighbour, aspect kept) to fit ``shape`` (rows, columns) and
    centred on black, where its size differs: a mixture's episodes (``--shift size=5,6``) render
    grids of different sizes, and a video's frames must share one."""
    if frame.shape[:2] == tuple(shape):
        return frame
    (H, W), (h, w) = shape, frame.shape[:2]
    scale = min(H / h, W / w)
    width, height = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = np.asarray(Image.fromarray(frame[..., :3]).resize((width, height), Image.NEAREST))
    out = np.zeros((H, W, 3), dtype=np.uint8)
    top, left = (H - height) // 2, (W - width) // 2
    out[top : top + height, left : left + width] = scaled
    return out


def strip_geometry(height: int, units: int) -> tuple[int, int]:
    """Top y and row height of the mechanism strips in a panel of ``height`` pixels."""
    top = 56
    row = max(8, min(28, (height - top - 24) // (2 * max(units, 1))))
    return top, row


def draw_panel(height: int, view: StepView, history: Sequence[np.ndarray]) -> np.ndarray:
    """A ``(height, PANEL_WIDTH, 3)`` panel for one step; ``history``: recent ``(U,)`` masks.
    A mission is written at the bottom, wrapped to at most ``MISSION_LINES`` lines."""
    panel = Image.new("RGB", (PANEL_WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    draw.text((8, 6), f"episode {view.episode}  step {view.step}", fill=TEXT, font=font)
    draw.text((8, 20), f"action {view.action}", fill=TEXT, font=font)
    draw.text((8, 34), f"return {view.episode_return:.3f}", fill=TEXT, font=font)
    lines = textwrap.wrap(view.mission or "", MISSION_CHARS)[:MISSION_LINES]
    for i, line in enumerate(lines):
        draw.text((8, height - 14 * (len(lines) - i) - 2), line, fill=TEXT, font=font)
    height -= 14 * len(lines) + 4 if lines else 0  # the strips and history stay above it
    if view.mask is not None:
        units = len(view.mask)
        top, row = strip_geometry(height, units)
        for u in range(units):
            y = top + u * row
            colour = ACTIVE if view.mask[u] else INACTIVE
            draw.rectangle((8, y, 48, y + row - 3), fill=colour)
            draw.text((12, y + max(0, row // 2 - 6)), f"{u}", fill=BACKGROUND, font=font)
            x0 = 56
            if view.position_attention is not None:  # where it looks: a map of the positions
                x0 += draw_map(draw, view.position_attention[u], 56, y + 1, row - 3) + 6
            width = PANEL_WIDTH - 14 - x0
            bar = int(round(float(view.input_attention[u]) * width))
            draw.rectangle((x0, y + 2, x0 + width, y + row - 5), outline=INACTIVE)
            if bar > 0:
                draw.rectangle((x0, y + 2, x0 + bar, y + row - 5), fill=BAR)
        # History: mechanisms x the last HISTORY steps, newest on the right.
        draw.text((8, top + units * row), f"last {HISTORY} steps", fill=TEXT, font=font)
        hist_top = top + units * row + 16
        cell_w = max(1, (PANEL_WIDTH - 16) // HISTORY)
        cell_h = max(2, min(row, (height - hist_top - 4) // max(units, 1)))
        recent = list(history)[-HISTORY:]
        offset = HISTORY - len(recent)
        for j, mask in enumerate(recent):
            for u in range(units):
                x = 8 + (offset + j) * cell_w
                y = hist_top + u * cell_h
                draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1),
                               fill=ACTIVE if mask[u] else INACTIVE)  # fmt: skip
    return np.asarray(panel)


def draw_map(draw: ImageDraw.ImageDraw, weights: np.ndarray, x: int, y: int, size: int) -> int:
    """A grey heat map of ``weights`` (N = side^2, row-major) in a ``size``-pixel square at
    (x, y): mid-grey where a position gets the uniform share 1/N, white from twice that, so
    untrained, near-uniform attention looks flat; returns its width."""
    side = int(round(len(weights) ** 0.5))
    cell = max(1, size // side)
    for i, value in enumerate(weights):
        level = int(255 * min(1.0, float(value) * len(weights) / 2))
        cx, cy = x + (i % side) * cell, y + (i // side) * cell
        draw.rectangle((cx, cy, cx + cell - 1, cy + cell - 1), fill=(level, level, level))
    return side * cell


def compose(frame: np.ndarray, panel: np.ndarray) -> np.ndarray:
    """Frame and panel side by side, padded to a multiple of 16 pixels (video codecs want it)."""
    height = max(frame.shape[0], panel.shape[0])
    width = frame.shape[1] + panel.shape[1]
    H, W = -(-height // 16) * 16, -(-width // 16) * 16
    out = np.zeros((H, W, 3), dtype=np.uint8)
    out[: frame.shape[0], : frame.shape[1]] = frame[..., :3]
    out[: panel.shape[0], frame.shape[1] : width] = panel
    return out


def action_name(env, action: int) -> str:
    """Minigrid's action enum name, ALE's action meaning, or the number."""
    unwrapped = env.unwrapped
    if hasattr(unwrapped, "get_action_meanings"):
        return unwrapped.get_action_meanings()[action]
    actions = getattr(unwrapped, "actions", None)
    try:
        return actions(action).name  # Minigrid's IntEnum
    except (TypeError, ValueError):
        return str(action)


@dataclass(frozen=True)
class Playback:
    """What to play: the env and its shifts, how many episodes from which seed (episode i
    resets with seed + i; actions are sampled from it too), greedy actions or sampled, and a
    limit of actions per episode (None: play each to its end)."""

    env_id: str
    shifts: Sequence[tuple[str, str]] = ()
    episodes: int = 1
    seed: int = 0
    deterministic: bool = False
    max_steps: int | None = None


def play_episodes(
    loaded: LoadedPolicy, playback: Playback
) -> Iterator[tuple[np.ndarray, StepView]]:
    """Play ``playback`` (one env) and yield every frame ``(H, W, 3)`` with its view, one at a
    time, so that a long episode is written as it plays rather than held in memory. An episode
    ends with a frame from which no action is taken (``view.final``); ``playback.max_steps``
    cuts each episode after that many actions (``view.cut``)."""
    env_id, shifts, seed, max_steps = (
        playback.env_id, playback.shifts, playback.seed, playback.max_steps
    )  # fmt: skip
    policy = loaded.policy
    device = next(policy.parameters()).device
    # Classic-control envs draw with pygame. Frames need no display, and SDL's real video
    # drivers print "error: XDG_RUNTIME_DIR is invalid ..." on a headless machine.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env_kwargs = env_kwargs_for(loaded.config, env_id)
    probe_resets(env_id, shifts, env_kwargs)  # one line, not a traceback, if it cannot reset
    env = make_env(env_id, render_mode="rgb_array", shifts=shifts, **env_kwargs)
    history: list[np.ndarray] = []
    canvas: tuple[int, int] | None = None  # the first frame's size, kept by every frame
    cuda_devices = [device] if device.type == "cuda" else []
    # The torch RNGs the actions draw from (the CPU's and the policy's GPU's) are restored after.
    with torch.random.fork_rng(devices=cuda_devices), closing(env):
        torch.manual_seed(seed)
        for episode in range(playback.episodes):
            with env_errors(env_id, shifts, "during recording", env, CALL_SECONDS):
                obs, _ = env.reset(seed=seed + episode)
            state = policy.initial_state(1, device)
            start = torch.ones(1, dtype=torch.bool, device=device)
            total, step, done = 0.0, 0, False
            mask = attention = positions = None
            mission = getattr(env.unwrapped, "mission", None)  # Minigrid's; fixed per episode
            while True:
                frame = upscale(env.render())
                canvas = canvas or frame.shape[:2]
                frame = fit(frame, canvas)
                cut = not done and max_steps is not None and step >= max_steps
                if done or cut:  # the last frame: no action is taken from it
                    view = StepView(step, episode + 1, "- (step limit)" if cut else "-", total,
                                    mask, attention, positions, mission, final=True,
                                    cut=cut)  # fmt: skip
                    yield compose(frame, draw_panel(frame.shape[0], view, history)), view
                    break
                with torch.no_grad():
                    batch = {k: v[None] for k, v in obs_to_tensors(obs, device).items()}  # (1,...)
                    act = policy.act(batch, state, start, deterministic=playback.deterministic)
                state, start = act.state, torch.zeros_like(start)
                action = int(act.actions[0])
                if act.info.mask is not None:
                    mask = act.info.mask[0, 0].cpu().numpy()  # (1, 1, U) -> (U,)
                    attention = 1.0 - act.info.null_attention[0, 0].cpu().numpy()
                    history.append(mask)
                    del history[:-HISTORY]  # the panel shows the last HISTORY steps only
                if act.info.input_attention is not None:
                    positions = act.info.input_attention[0, 0].cpu().numpy()  # (1,1,U,N) -> (U,N)
                view = StepView(step, episode + 1, action_name(env, action), total, mask,
                                attention, positions, mission)  # fmt: skip
                yield compose(frame, draw_panel(frame.shape[0], view, history)), view
                with env_errors(env_id, shifts, "during recording", env, CALL_SECONDS):
                    obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                step += 1
                done = terminated or truncated


def record_episodes(loaded: LoadedPolicy, playback: Playback) -> Recording:
    """``play_episodes`` held in memory: every frame, its view and each episode's return."""
    rec = Recording()
    with closing(play_episodes(loaded, playback)) as frames:
        for frame, view in frames:
            rec.frames.append(frame)
            rec.views.append(view)
            if view.final:
                rec.returns.append(view.episode_return)
    return rec


def write_video(frames: Iterable[np.ndarray], path: Path, fps: int) -> int:
    """Write ``.gif`` or ``.mp4`` atomically (no partial file is ever left at ``path``) and
    return the number of frames. An ``.mp4`` is encoded as the frames come, in constant
    memory, and checked whole before it is renamed into place (ffmpeg reports a full disk
    only on its stderr); a ``.gif`` is assembled from all of them at the end, in memory
    (Pillow's GIF writer holds them: about 0.7 MB an Atari frame), then written. ``OSError``
    (naming ``path``) where it cannot be written."""
    import imageio.v2 as imageio

    count = 0
    with atomic_output(path) as tmp:
        gif = path.suffix.lower() == ".gif"
        if gif:
            target: Path | io.BytesIO = io.BytesIO()
            options = dict(format="GIF", mode="I", duration=1000.0 / fps, loop=0)
        else:
            target = tmp
            options = dict(fps=fps, codec="libx264", quality=8, macro_block_size=16,
                           ffmpeg_log_level="quiet")  # fmt: skip
        try:
            with imageio.get_writer(target, **options) as writer:
                for frame in frames:
                    writer.append_data(frame)
                    count += 1
        except OSError as err:  # ffmpeg died: imageio's message is ffmpeg's command and log
            if gif:
                raise
            raise ffmpeg_failure(path, str(err).strip().split("\n")[0]) from err
        if isinstance(target, io.BytesIO):
            tmp.write_bytes(target.getbuffer())
        elif not mp4_is_whole(tmp):
            raise ffmpeg_failure(path)
    return count


def ffmpeg_failure(path: Path, reason: str = "") -> OSError:
    """The one-line error of an ``.mp4`` that ffmpeg could not finish (its own log is off):
    ``reason`` (the first line of imageio's error, where there was one) and the space left."""
    free = shutil.disk_usage(path.parent).free
    detail = f"{reason}; " if reason else ""
    why = f"ffmpeg could not finish the video ({detail}{free:,} bytes free on its disk)"
    return OSError(errno.EIO, why, str(path))


def mp4_is_whole(path: Path) -> bool:
    """Whether ``path`` is a sequence of complete top-level MP4 boxes that includes the
    ``moov`` index, which ffmpeg writes last: a file cut short by a full disk is not."""
    size, offset, boxes = path.stat().st_size, 0, set()
    with path.open("rb") as f:
        while offset < size:
            f.seek(offset)
            header = f.read(16)
            if len(header) < 8:
                return False
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1:  # a 64-bit length follows the type
                length = int.from_bytes(header[8:16], "big") if len(header) == 16 else 0
            elif length == 0:  # the box runs to the end of the file
                length = size - offset
            if length < 8 or offset + length > size:
                return False
            boxes.add(kind)
            offset += length
    return b"moov" in boxes
