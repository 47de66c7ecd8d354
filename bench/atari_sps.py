"""Training steps/s on Atari (Breakout) for the rims (plain, --rims-bf16, --rims-compile), lstm and
gru cores, measured in one run.

The Atari preset (8 envs x 128 steps, 4 epochs x 4 minibatches, Nature CNN, 6 RIMs x 100 with
4 active, LSTM/GRU of 600) unless flags say otherwise; each core trains for --updates updates and
two figures are printed: agent steps / seconds over the whole training loop (start-up excluded,
the first update's warm-up and compiling included), and the steady rate, the median of the
per-update rates (``charts/SPS``) after the first update. One agent step is 4 emulator frames.

    python bench/atari_sps.py                                 # CPU here: 2 updates per core
    python bench/atari_sps.py --device cuda --updates 20      # a GPU (say which card)
    python bench/atari_sps.py --num-envs 64 --spatial         # RIMs reading the 7x7 feature map
    python bench/atari_sps.py --bptt 32 --cores rims lstm     # training on 32-step chunks
    python bench/atari_sps.py --cores rims rims-compile rims-bf16-compile   # RIMs variants
    python bench/atari_sps.py --device cuda --cores rims-graphs rims-compile-graphs lstm
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from agents.config import resolve_config
from agents.curves import read_curve
from agents.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ALE/Breakout-v5")
    parser.add_argument(
        "--cores", nargs="+", default=["rims", "rims-bf16", "lstm", "gru"],
        help="cores to time; rims may carry -bf16, -compile, -triton and/or -graphs "
        "(--rims-bf16, --rims-compile, --rims-triton, --rims-graphs)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--spatial", action="store_true", help="RIMs read the feature map as a set")
    parser.add_argument(
        "--tf32", action="store_true", help="float32 matmuls on TF32 tensor cores (CUDA only)"
    )
    parser.add_argument(
        "--bptt", type=int, default=0, help="train on chunks of this many steps (0: whole columns)"
    )
    args = parser.parse_args()
    # The runs only serve the timing: their folder goes when this object does (at exit).
    scratch = tempfile.TemporaryDirectory(prefix="atari_sps_")
    root = Path(scratch.name)
    rows = []
    variants = []  # (name, core, options), all checked before any trains
    for core in args.cores:
        kind, *options = core.split("-")
        if set(options) - {"bf16", "compile", "triton", "graphs"} or (options and kind != "rims"):
            parser.error(f"unknown core {core!r} "
                         "(rims[-bf16][-compile][-triton][-graphs], lstm, gru, ff)")  # fmt: skip
        variants.append((core, kind, options))
    for i, (core, kind, options) in enumerate(variants):
        given = dict(
            env=args.env,
            core=kind,
            rims_bf16="bf16" in options,
            rims_compile="compile" in options,
            rims_triton="triton" in options,
            rims_graphs="graphs" in options,
            device=args.device,
            num_envs=args.num_envs,
            run_dir=str(root / f"{i}-{core}"),
            progress=False,
            checkpoint_every=10**6,
            bptt=args.bptt,
            tf32=args.tf32,
        )
        if core.startswith("rims") and args.spatial:
            given["rims_spatial"] = True
        config = resolve_config({**given, "total_steps": args.updates * args.num_envs * 128})
        result = train(config)
        _, per_update = read_curve(Path(config.run_dir), "charts/SPS")  # one rate per update
        steady = statistics.median(per_update[1:]) if len(per_update) > 1 else float("nan")
        rows.append((core + (" (spatial)" if given.get("rims_spatial") else ""),
                     result.global_step / result.seconds, float(steady)))  # fmt: skip
        print(f"done {rows[-1][0]}: {rows[-1][1]:.0f} steps/s, steady {steady:.0f}", flush=True)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads")  # fmt: skip
    base = {core: (sps, steady) for core, sps, steady in rows}.get("lstm")
    chunks = f"{args.bptt}-step chunks" if args.bptt else "whole columns"
    setup = f"{args.num_envs} envs x 128 steps ({chunks}), {args.updates} updates/core"
    setup += ", TF32 matmuls" if args.tf32 else ""
    print(f"\n{args.env}, {setup}; {name}")
    print(f"{'core':<22}{'steps/s':>10}{'x lstm':>8}{'steady':>10}{'x lstm':>8}")
    nan = float("nan")
    for core, sps, steady in rows:
        ratio, steady_ratio = (sps / base[0], steady / base[1]) if base else (nan, nan)
        print(f"{core:<22}{sps:>10.0f}{ratio:>8.2f}{steady:>10.0f}{steady_ratio:>8.2f}")


if __name__ == "__main__":
    main()
