"""Logging outside the algorithm: TensorBoard scalars and a progress bar."""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np
import torch
from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.ppo import UpdateStats
from agents.rollout import RolloutStats
from agents.selection import switched_units
from agents.training_eval import RowResult, mean_shifted_return, summary_line

RECENT_EPISODES = 100
"""The training episodes whose mean return is the run's "mean recent return" (the final line,
``best.pt``, ``--schedule-after-return``)."""


def activation_image(masks: Tensor, env: int = 0, row_height: int = 8) -> np.ndarray:
    """``(T, B, U)`` bool masks -> ``(U * row_height, T)`` uint8: env ``env``'s mechanisms
    (rows) over the rollout (columns), white where active."""
    rows = masks[:, env].T.to(torch.uint8).mul(255).cpu().numpy()  # (T, U) -> (U, T)
    return np.repeat(rows, row_height, axis=0)  # (U, T) -> (U * row_height, T)


def attention_maps(attention: Tensor, scale: int = 8) -> np.ndarray:
    """``(U, N)`` attention on N = side^2 positions -> ``(side*scale, U*(side+1)*scale)`` uint8:
    one map per RIM side by side; mid-grey is the uniform share 1/N, white twice it or more."""
    U, N = attention.shape
    side = int(round(N**0.5))
    maps = attention.reshape(U, side, side).float()  # (U, N) -> (U, side, side)
    maps = (maps * N / 2).clamp(max=1.0)
    padded = torch.nn.functional.pad(maps, (0, 1))  # a dark column between RIMs
    row = padded.permute(1, 0, 2).reshape(side, U * (side + 1))  # (U,side,side+1) -> (side, .)
    image = (row * 255).to(torch.uint8).cpu().numpy()
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def wait_for_newer_event_file(run_dir: Path) -> None:
    """Return once an event file made now would sort after every one in ``run_dir``.

    Event files are named ``events.out.tfevents.<unix seconds>.<host>.<pid>...`` and TensorBoard
    reads them in name order; a run resumed within the second its predecessor started would be
    read first, so its purge marker would not drop the old events and its curve would come out
    of order. Waits at most about a second, and only then (never for a file stamped in the
    future by a skewed clock).
    """
    stamps = [
        int(parts[3])
        for path in run_dir.glob("events.out.tfevents.*")
        if len(parts := path.name.split(".")) > 3 and parts[3].isdigit()
    ]
    deadline = time.time() + 1.5
    while stamps and int(time.time()) <= max(stamps) and time.time() < deadline:
        time.sleep(0.05)


class EventsUnwritable(Exception):
    """TensorBoard's event file could not be written (a full disk); the message is one line."""


def quiet_event_writer_threads() -> None:
    """Keep Python from printing a traceback when TensorBoard's writer thread fails. The thread
    keeps its exception, and the writer raises it again in the thread that logs next, where
    ``RunLogger`` turns it into ``EventsUnwritable``. Other threads' errors print as before."""
    previous = threading.excepthook
    if getattr(previous, "quiets_event_writers", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.thread, _AsyncWriterThread):
            previous(args)

    hook.quiets_event_writers = True  # type: ignore[attr-defined]
    threading.excepthook = hook


Params = ParamSpec("Params")
Returned = TypeVar("Returned")


def writes_events(
    method: Callable[Concatenate[RunLogger, Params], Returned],
) -> Callable[Concatenate[RunLogger, Params], Returned]:
    """A ``RunLogger`` method whose writes may fail: an ``OSError`` of the event file (raised
    by the writer, or kept by its thread and raised at the next write) becomes one
    ``EventsUnwritable`` line naming the run folder, and the writer is dropped."""

    @functools.wraps(method)
    def logged(self: RunLogger, *args: Params.args, **kwargs: Params.kwargs) -> Returned:
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            self.writer = None  # it cannot write; closing it would raise the same error again
            raise events_unwritable(self.run_dir, err) from None

    return logged


def events_unwritable(run_dir: Path, err: OSError) -> EventsUnwritable:
    return EventsUnwritable(
        f"cannot write the TensorBoard events in {run_dir}: {err.strerror or err}"
    )


class RunLogger:
    """Writes ``charts/*``, ``losses/*``, ``perf/*`` (where an update's time went), ``rims/*``,
    with ``--centre-features`` ``features/*`` and with ``--eval-every`` ``eval/*`` scalars; shows
    steps/s and recent return."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        progress: bool = True,
        image_every: int = 0,
        enabled: bool = True,
    ) -> None:
        """``enabled=False`` (data-parallel ranks other than 0) keeps the returns for the mean
        but writes nothing and shows no bar."""
        self.run_dir = run_dir
        self.image_every = image_every
        self.updates = 0
        self.enabled = enabled
        # purge_step drops events a crashed run wrote after its last checkpoint (step > start),
        # so resumed curves continue from the checkpoint's step without overlaps.
        if enabled and start_step:
            wait_for_newer_event_file(run_dir)
        self.writer: SummaryWriter | None = None
        if enabled:
            quiet_event_writer_threads()
            try:  # the writer writes its file's first record at once
                purge = start_step + 1 if start_step else None
                self.writer = SummaryWriter(str(run_dir), purge_step=purge)
            except OSError as err:
                raise events_unwritable(run_dir, err) from None
        self.recent_returns: deque[float] = deque(maxlen=RECENT_EPISODES)
        # RIMs: (units switched, units) in the last update's rollout; None for other cores.
        self.last_selection: tuple[int, int] | None = None
        self.bar = tqdm(
            total=total_steps, initial=start_step, disable=not progress, unit="step",
            dynamic_ncols=True, smoothing=0.1,
        ) if enabled else None  # fmt: skip

    @property
    def mean_recent_return(self) -> float | None:
        """Mean return of the last 100 finished training episodes (None before the first)."""
        return float(np.mean(self.recent_returns)) if self.recent_returns else None

    @writes_events
    def log_update(
        self,
        global_step: int,
        steps_this_update: int,
        rollout: RolloutStats,
        update: UpdateStats,
        learning_rate: float,
        sps: float,
    ) -> None:
        w = self.writer
        if rollout.episode_returns:
            self.recent_returns.extend(rollout.episode_returns)
        if w is None:
            return
        if rollout.episode_returns:
            w.add_scalar("charts/episodic_return", np.mean(rollout.episode_returns), global_step)
            w.add_scalar("charts/episodic_length", np.mean(rollout.episode_lengths), global_step)
        w.add_scalar("charts/SPS", sps, global_step)
        w.add_scalar("charts/learning_rate", learning_rate, global_step)
        for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
            w.add_scalar(f"losses/{name}", getattr(update, name), global_step)
        w.add_scalar("losses/explained_variance", update.explained_variance, global_step)
        w.add_scalar("losses/grad_norm", update.grad_norm, global_step)
        if update.selection_balance is not None:
            w.add_scalar("losses/selection_balance", update.selection_balance, global_step)
        w.add_scalar("perf/rollout_seconds", rollout.seconds, global_step)
        w.add_scalar("perf/update_seconds", update.seconds, global_step)
        if rollout.active_fraction is not None:
            for unit, frac in enumerate(rollout.active_fraction):
                w.add_scalar(f"rims/active_fraction_unit_{unit}", frac, global_step)
            switched = len(switched_units(rollout.active_fraction))
            w.add_scalar("rims/switched_units", switched, global_step)
            self.last_selection = (switched, len(rollout.active_fraction))
        self.updates += 1
        if (
            self.image_every
            and rollout.last_masks is not None
            and (self.updates % self.image_every == 1 or self.image_every == 1)
        ):
            w.add_image("rims/activation", activation_image(rollout.last_masks), global_step,
                        dataformats="HW")  # fmt: skip
            if rollout.last_input_attention is not None:
                w.add_image("rims/input_attention", attention_maps(rollout.last_input_attention),
                            global_step, dataformats="HW")  # fmt: skip
        recent = self.mean_recent_return
        self.bar.set_postfix_str(
            f"SPS {sps:,.0f} | return {'-' if recent is None else f'{recent:.3f}'}", refresh=False
        )
        self.bar.update(steps_this_update)

    @writes_events
    def log_features(
        self, global_step: int, mean_to_spread: float, size_factor: float | None
    ) -> None:
        """With ``--centre-features``: the rollout's ``features/mean_to_spread`` (its mean
        feature's length over their deviation from it) and, with ``--centre-keep-size``, the
        running ``features/size_factor`` the centred features are multiplied by."""
        if self.writer is None:
            return
        self.writer.add_scalar("features/mean_to_spread", mean_to_spread, global_step)
        if size_factor is not None:
            self.writer.add_scalar("features/size_factor", size_factor, global_step)

    @writes_events
    def log_shift_share(self, global_step: int, share: float) -> None:
        """With ``--shift-schedule``: ``charts/shift_share``, the share of episodes drawn
        shifted during the rollout that ended at ``global_step``."""
        if self.writer is not None:
            self.writer.add_scalar("charts/shift_share", share, global_step)

    def log_schedule_start(self, global_step: int, mean_return: float) -> None:
        """With ``--schedule-after-return``: one line on the terminal where the schedule
        starts (``charts/shift_share`` shows it in the curves)."""
        if self.bar is not None:
            self.bar.write(
                f"step {global_step:,}: mean return of the last 100 episodes {mean_return:.3f}; "
                "--shift-schedule starts"
            )

    @writes_events
    def log_eval(self, global_step: int, results: list[RowResult], seconds: float) -> None:
        """Each row's ``eval/.../return``, ``success_rate`` (where defined), ``length`` and
        ``truncated_rate`` (the share of episodes cut by the env's step limit), the
        mean over the rows other than the target as ``eval/shifted_return``, the time it took as
        ``perf/eval_seconds``, and one line on the terminal."""
        if self.writer is None or not results:
            return
        self.writer.add_scalar("perf/eval_seconds", seconds, global_step)
        for r in results:
            self.writer.add_scalar(r.target.tag("return"), r.result.mean_return, global_step)
            self.writer.add_scalar(r.target.tag("length"), r.result.mean_length, global_step)
            if r.result.truncated_rate is not None:
                cut = r.result.truncated_rate
                self.writer.add_scalar(r.target.tag("truncated_rate"), cut, global_step)
            if r.result.success_rate is not None:
                rate = r.result.success_rate
                self.writer.add_scalar(r.target.tag("success_rate"), rate, global_step)
        shifted = mean_shifted_return(results)
        if shifted is not None:
            self.writer.add_scalar("eval/shifted_return", shifted, global_step)
        self.bar.write(summary_line(global_step, results, seconds))  # above the bar, if any

    @writes_events
    def close(self) -> None:
        """Close the bar and the writer; the writer's flush raises an error its thread kept.
        Once closed, the logger writes nothing more, and closing it again does nothing."""
        writer, self.writer = self.writer, None
        if self.bar is not None:
            self.bar.close()
        if writer is not None:
            writer.flush()
            writer.close()
