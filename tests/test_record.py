"""``rims record`` videos and their panel, ``rims plot`` curves, the TensorBoard activation image."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.checkpoint import load_policy
from agents.curves import expand_tags, scalar_tags, step_label
from agents.record import (
    ACTIVE,
    INACTIVE,
    PANEL_WIDTH,
    Playback,
    StepView,
    draw_panel,
    mp4_is_whole,
    record_episodes,
    strip_geometry,
)
from envs.memory import ENV_ID
from tests.test_cli import TINY, exit_code
from train import main

CUE = ["--env", ENV_ID, "--total-steps", "32"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for name, extra in (("rims1", ["--seed", "1", "--image-every", "1"]), ("rims2", ["--seed", "2"]),
                        ("lstm1", ["--core", "lstm"])):  # fmt: skip
        made[name] = root / name
        assert main(["train", *CUE, "--run-dir", str(made[name]), *TINY, *extra]) == 0
    return made


def test_gif_has_one_frame_per_step_and_the_panel(runs, tmp_path, capsys):
    out = tmp_path / "cue.gif"
    assert main(["record", str(runs["rims1"]), "--out", str(out), "--episodes", "2"]) == 0
    assert "2 episode(s), returns" in capsys.readouterr().out
    frames = iio.imread(out, index=None)
    # The cue task lasts delay + 2 = 6 steps: 7 frames per episode (the last has no action).
    assert frames.shape[0] == 14
    assert frames.shape[2] >= 96 * 10 + PANEL_WIDTH  # 32x96 render upscaled x10, plus the panel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cue.gif"]  # no temp file left


def test_mp4_decodes_to_the_expected_frames(runs, tmp_path):
    out = tmp_path / "cue.mp4"
    assert main(["record", str(runs["lstm1"]), "--out", str(out), "--episodes", "1"]) == 0
    with imageio.get_reader(out) as reader:
        assert reader.count_frames() == 7


def test_mp4_is_whole_tells_a_finished_video_from_one_cut_short(runs, tmp_path):
    out = tmp_path / "cue.mp4"
    assert main(["record", str(runs["lstm1"]), "--out", str(out), "--episodes", "1"]) == 0
    data = out.read_bytes()
    assert mp4_is_whole(out)
    cut = tmp_path / "cut.mp4"
    for end in (4, 8, len(data) // 2, len(data) - 1):  # a disk that filled up part way
        cut.write_bytes(data[:end])
        assert not mp4_is_whole(cut), end
    # Whole boxes without the moov index (ffmpeg writes it last): not a finished video.
    moov = data.index(b"moov") - 4
    cut.write_bytes(data[:moov])
    assert not mp4_is_whole(cut)


@pytest.mark.parametrize("how", ["gif", "mp4", "mp4 cut quietly"])
def test_a_video_that_cannot_be_written_is_one_line_and_leaves_no_file(
    runs, tmp_path, monkeypatch, capsys, how
):
    suffix = f".{how[:3]}"
    out = tmp_path / f"cue{suffix}"
    real_bytes, real_writer = Path.write_bytes, imageio.get_writer

    def full_disk(path: Path, data) -> int:  # a GIF is written from memory in one go
        real_bytes(path, bytes(data)[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def dying_ffmpeg(target, **options):  # ffmpeg's pipe breaks part way, as on a full disk
        writer = real_writer(target, **options)
        writer.append_data = lambda frame: (_ for _ in ()).throw(
            OSError("[Errno 32] Broken pipe\n\nFFMPEG COMMAND:\n...")
        )
        return writer

    class CutWriter:  # ffmpeg ends as if all went well, its file cut short (its log is off)
        def __init__(self, target, **options) -> None:
            self.target, self.writer = target, real_writer(target, **options)
            self.append_data = self.writer.append_data

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.writer.close()
            data = Path(self.target).read_bytes()
            real_bytes(Path(self.target), data[: len(data) // 2])

    replaced = {"gif": (Path, "write_bytes", full_disk),
                "mp4": (imageio, "get_writer", dying_ffmpeg),
                "mp4 cut quietly": (imageio, "get_writer", CutWriter)}  # fmt: skip
    monkeypatch.setattr(*replaced[how])
    assert main(["record", str(runs["lstm1"]), "--out", str(out), "--episodes", "1"]) == 1
    err = capsys.readouterr().err.strip()
    why = "No space left on device" if suffix == ".gif" else "ffmpeg could not finish the video"
    assert err.startswith(f"rims: error: {out}: {why}") and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []  # neither the video nor a temporary file
    if how == "mp4":  # imageio's error is ffmpeg's command and log: its first line is kept
        assert "video ([Errno 32] Broken pipe; " in err


def test_max_steps_cuts_each_episode_and_says_so(runs, tmp_path, capsys):
    out = tmp_path / "short.gif"
    argv = ["record", str(runs["rims1"]), "--out", str(out), "--episodes", "2"]
    assert main([*argv, "--max-steps", "3"]) == 0
    text = capsys.readouterr().out
    assert "8 frames" in text and text.count("(cut)") == 3 and "--max-steps 3" in text
    assert iio.imread(out, index=None).shape[0] == 8  # 3 actions and the last frame, twice
    playback = Playback(ENV_ID, episodes=2, max_steps=3)
    ends = [v for v in record_episodes(load_policy(runs["rims1"]), playback).views if v.final]
    assert [v.step for v in ends] == [3, 3] and all(v.cut for v in ends)
    # A limit the episodes never reach (6 steps) cuts nothing.
    assert main([*argv, "--max-steps", "6"]) == 0
    text = capsys.readouterr().out
    assert "14 frames" in text and "(cut)" not in text


def test_the_panel_writes_the_mission_at_its_bottom():
    view = StepView(0, 1, "forward", 0.0, mission="put the red ball next to the blue key")
    plain = draw_panel(320, StepView(0, 1, "forward", 0.0), [])
    written = draw_panel(320, view, [])
    # Text is light grey on the dark panel (anti-aliased: no pixel need be exactly TEXT).
    assert (written[-40:] > 150).all(-1).any() and not (plain[-40:] > 150).all(-1).any()
    assert np.array_equal(written[:50], plain[:50])  # the header is where it was


def test_rims_panel_matches_the_mask_and_recording_is_deterministic(runs):
    loaded = load_policy(runs["rims1"])
    rec = record_episodes(loaded, Playback(ENV_ID, episodes=2, seed=4))
    again = record_episodes(loaded, Playback(ENV_ID, episodes=2, seed=4))
    assert all(np.array_equal(a, b) for a, b in zip(rec.frames, again.frames))
    assert rec.returns == again.returns
    k, units = loaded.policy.core.k, loaded.policy.core.num_units
    for frame, view in zip(rec.frames, rec.views):
        assert view.mask is not None and view.mask.sum() == k
        top, row = strip_geometry(320, units)
        panel_x = 320 * 3 + 20  # the 32x96 render upscaled to 320x960, then 20 px into the panel
        for u in range(units):
            pixel = tuple(frame[top + u * row + 1, panel_x])
            assert pixel == (ACTIVE if view.mask[u] else INACTIVE), (u, pixel)
    other = record_episodes(loaded, Playback(ENV_ID, episodes=2, seed=5))
    assert not all(np.array_equal(a, b) for a, b in zip(rec.frames, other.frames))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "x.avi"], "extension must be one of .gif, .mp4"),
        (["--out", "/no/such/dir/x.gif"], "folder /no/such/dir does not exist"),
        (
            ["--out", "x.gif", "--env", "CartPole-v1"],
            "takes obs of shape (3,), CartPole-v1 gives (4,)",
        ),
        (["--out", "x.gif", "--shift", "size=8"], "shift size does not apply"),
    ],
)
def test_record_bad_input(runs, tmp_path, monkeypatch, extra, message, capsys):
    monkeypatch.chdir(tmp_path)
    assert exit_code(["record", str(runs["rims1"]), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_recording_a_pygame_env_prints_no_display_error(tmp_path):
    # CartPole draws with pygame; without a display SDL's video drivers print an "error:" line.
    run = tmp_path / "cartpole"
    assert main(["train", "--env", "CartPole-v1", "--total-steps", "32", "--run-dir", str(run),
                 *TINY]) == 0  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "SDL_VIDEODRIVER")}
    argv = [sys.executable, str(ROOT / "train.py"), "record", str(run), "--max-steps", "3"]
    done = subprocess.run([*argv, "--out", str(tmp_path / "c.gif")], capture_output=True,
                          text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    assert (tmp_path / "c.gif").exists()


def test_record_takes_a_device_and_leaves_the_torch_rng_as_it_was(runs, tmp_path, capsys):
    loaded = load_policy(runs["rims1"])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    record_episodes(loaded, Playback(ENV_ID, episodes=2, seed=4))
    assert torch.equal(torch.get_rng_state(), before)  # the actions drew from a forked RNG
    plain, on_cpu = tmp_path / "plain.gif", tmp_path / "cpu.gif"
    assert main(["record", str(runs["rims1"]), "--out", str(plain), "--episodes", "2"]) == 0
    argv = ["record", str(runs["rims1"]), "--out", str(on_cpu), "--episodes", "2"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert np.array_equal(iio.imread(plain, index=None), iio.imread(on_cpu, index=None))
    capsys.readouterr()
    bad = tmp_path / "bad.gif"
    assert exit_code(["record", str(runs["rims1"]), "--out", str(bad), "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device must be auto, cpu, cuda or cuda:N, got 'gpu'" in err
    assert len(err.splitlines()) == 1 and not bad.exists()
    if not torch.cuda.is_available():
        assert exit_code(["record", str(runs["rims1"]), "--out", str(bad), "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert "sees no CUDA device" in err and len(err.splitlines()) == 1 and not bad.exists()


def test_record_missing_checkpoint(tmp_path, capsys):
    assert exit_code(["record", str(tmp_path / "none"), "--out", str(tmp_path / "x.gif")]) == 2
    assert "no run directory or checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "x.gif").exists()


def test_plot_pools_seeds_of_one_config(runs, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert main(["plot", *(str(runs[n]) for n in ("rims1", "rims2", "lstm1")), "--out", str(out),
                 "--tag", "charts/SPS"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert f"rims on {ENV_ID}: 2 run(s)" in text and f"lstm on {ENV_ID}: 1 run(s)" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert exit_code(["plot", str(runs["rims1"]), "--tag", "no/such", "--out", str(out)]) == 2


def test_plot_labels_steps_short_enough_not_to_run_together():
    labels = [step_label(x) for x in (0, 400, 50_000, 150_000, 1_500_000, 10_000_000, 2.5e9)]
    assert labels == ["0", "400", "50k", "150k", "1.5M", "10M", "2.5G"]


def test_plot_leaves_out_a_run_with_no_episode_yet(runs, tmp_path, capsys):
    # 32 steps of DoorKey end no episode: the run has no charts/episodic_return point.
    young = tmp_path / "young"
    assert main(["train", "--total-steps", "32", "--run-dir", str(young), *TINY]) == 0
    out = tmp_path / "curves.png"
    assert main(["plot", str(runs["rims1"]), str(young), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"left out: {young} has no scalar 'charts/episodic_return'" in text
    assert f"rims on {ENV_ID}: 1 run(s)" in text and out.exists()
    assert exit_code(["plot", str(young), "--out", str(out)]) == 2
    assert "(it has: charts/SPS" in capsys.readouterr().err
    both = ["plot", str(runs["rims1"]), str(young), "--tag", "no/such", "--out", str(out)]
    assert exit_code(both) == 2
    assert "(and 1 more run(s) like it)" in capsys.readouterr().err


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()  # the IHDR chunk: width and height, big-endian, after the header
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_takes_several_tags_and_patterns(runs, tmp_path, capsys):
    run = runs["rims1"]
    charts = [t for t in scalar_tags(run) if t.startswith("charts/")]
    assert len(charts) == 4 and "charts/episodic_return" in charts
    tags = expand_tags([run], ["charts/episodic_return", "charts/*", "losses/entropy"])
    assert tags[0] == "charts/episodic_return" and tags.count("charts/episodic_return") == 1
    assert sorted(tags[:-1]) == sorted(charts) and tags[-1] == "losses/entropy"
    one, five = tmp_path / "one.png", tmp_path / "five.png"
    assert main(["plot", str(run), "--out", str(one)]) == 0
    assert main(["plot", str(run), "--tag", "charts/*", "--tag", "losses/entropy",
                 "--out", str(five)]) == 0  # fmt: skip
    # One panel at 7 x 4 inches; five in rows of three at 4.6 x 3.4 each; 120 dpi.
    assert png_size(one) == (840, 480) and png_size(five) == (1656, 816)
    capsys.readouterr()
    assert exit_code(["plot", str(run), "--tag", "nope/*", "--out", str(one)]) == 2
    err = capsys.readouterr().err
    assert "no scalar of the runs matches 'nope/*' (they have: charts/SPS" in err


def test_tensorboard_gets_the_activation_image(runs):
    acc = EventAccumulator(str(runs["rims1"]))
    acc.Reload()
    assert "rims/activation" in acc.Tags()["images"]
    image = acc.Images("rims/activation")[0]
    assert image.height == 3 * 8 and image.width == 16  # 3 RIMs x 8 px rows, 16 steps


def test_attention_maps_are_relative_to_the_uniform_share():
    """Uniform attention is mid-grey, a position with all of it white, the others black, in
    both the TensorBoard image and the record panel's maps."""
    import torch
    from PIL import Image, ImageDraw

    from agents.logger import attention_maps
    from agents.record import draw_map

    uniform = torch.full((9,), 1 / 9)
    focused = torch.zeros(9).index_fill_(0, torch.tensor([4]), 1.0)
    image = attention_maps(torch.stack([uniform, focused]), scale=1)  # (3, 2 * 4)
    assert image.shape == (3, 8)
    assert (image[:, :3] == 127).all() and (image[:, 3] == 0).all()  # uniform, then the gap
    assert image[1, 5] == 255 and image[:, 4:7].sum() == 255  # the centre of the second map
    canvas = Image.new("RGB", (3, 3))
    assert draw_map(ImageDraw.Draw(canvas), focused.numpy(), 0, 0, 3) == 3
    grey = np.asarray(canvas)[..., 0]
    assert grey[1, 1] == 255 and grey.sum() == 255


def assert_attention_maps_shown(run, env_id: str, units: int = 3, side: int = 7) -> None:
    """A spatial-RIMs run wrote each RIM's side x side attention map to TensorBoard, and its
    recording's panel gets the maps, which with the null element hold all the attention."""
    acc = EventAccumulator(str(run))
    acc.Reload()
    image = acc.Images("rims/input_attention")[0]  # the RIMs' maps side by side, x8
    assert (image.height, image.width) == (side * 8, units * (side + 1) * 8)
    rec = record_episodes(load_policy(run), Playback(env_id))
    view = rec.views[0]
    assert view.position_attention.shape == (units, side * side)
    np.testing.assert_allclose(
        view.position_attention.sum(-1) + (1 - view.input_attention), np.ones(units), rtol=1e-5
    )
    assert len(rec.frames) == len(rec.views) > 1


def test_minigrid_spatial_rims_attend_over_the_view_cells(tmp_path):
    """``--rims-spatial`` on Minigrid: one input element per cell of the 7x7 view."""
    run = tmp_path / "run"
    doorkey = ["--env", "MiniGrid-DoorKey-5x5-v0", "--total-steps", "32"]
    assert main(["train", *doorkey, *TINY, "--rims-spatial", "--image-every", "1",
                 "--run-dir", str(run)]) == 0  # fmt: skip
    assert_attention_maps_shown(run, "MiniGrid-DoorKey-5x5-v0")
