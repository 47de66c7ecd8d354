"""Data-parallel scaling: training steps/s with 1, 2 and 4 processes under torchrun.

Each process runs its own envs (so the job's batch grows with the processes) and one torch
thread; the figure is all ranks' steps per second of the training loop (start-up excluded),
read from rank 0's TensorBoard events. On a CPU with fewer cores than processes the extra
processes only compete for the cores: the point is to show the overhead of the gradient
all-reduce, and on a multi-GPU machine, the scaling.

    python bench/ddp_scaling.py                                   # Minigrid, CPU, gloo
    python bench/ddp_scaling.py --procs 1 2 4 8 --env ALE/Breakout-v5 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--env", default="MiniGrid-DoorKey-5x5-v0")
    parser.add_argument("--core", default="rims")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--updates", type=int, default=6, help="updates per run")
    args = parser.parse_args()
    torchrun = Path(sys.executable).with_name("torchrun")
    # The runs only serve the timing: their folder goes when this object does (at exit).
    scratch = tempfile.TemporaryDirectory(prefix="ddp_scaling_")
    root = Path(scratch.name)
    rows = []
    for procs in args.procs:
        run = root / f"p{procs}"
        steps = args.updates * procs * 16 * 128  # the Minigrid preset: 16 envs x 128 steps
        cmd = [str(torchrun), "--standalone", "--nproc_per_node", str(procs),
               str(ROOT / "train.py"), "--env", args.env, "--core", args.core,
               "--device", args.device, "--total-steps", str(steps), "--run-dir", str(run),
               "--no-progress", "--torch-threads", "1", "--num-envs", "16",
               "--num-steps", "128"]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       stdout=subprocess.DEVNULL)  # fmt: skip
        acc = EventAccumulator(str(run))
        acc.Reload()
        sps = statistics.median(e.value for e in acc.Scalars("charts/SPS")[1:])  # skip warm-up
        rows.append((procs, sps))
        print(f"{procs} process(es): {sps:.0f} steps/s", flush=True)
    base = rows[0][1]
    print(f"\n{args.env}, core {args.core}, {args.device}, 16 envs x 128 steps per process")
    print(f"{'processes':>10}{'steps/s':>10}{'speed-up':>10}")
    for procs, sps in rows:
        print(f"{procs:>10}{sps:>10.0f}{sps / base:>10.2f}")


if __name__ == "__main__":
    main()
