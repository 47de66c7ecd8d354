"""The RIMs hand-written backward against autograd, at recurrent-PPO training shapes.

Forward+backward time per step of the same RIMs module with ``manual_backward`` on and off,
alternated in one run (median of 5 repeats, best of 2 rounds).

    python bench/rims_backward.py               # Minigrid shapes: input 64, 6 x 32, T=128, B=4
    python bench/rims_backward.py --input 512 --hidden 100 --time 32 --batch 16 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from policies import RIMs


def per_step_ms(m: RIMs, x: torch.Tensor, repeats: int) -> float:
    state = m.initial_state(x.shape[1])
    starts = torch.zeros(x.shape[:2], dtype=torch.bool)

    def run() -> None:
        out, _, _ = m(x, state, starts)
        out.sum().backward()

    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times) / x.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--units", type=int, default=6)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--time", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"input {args.input}, {args.units} RIMs x {args.hidden} ({args.k} active), "
        f"T={args.time}, B={args.batch}, {args.threads} thread(s), torch {torch.__version__}"
    )
    for cell in ("lstm", "gru"):
        best: dict[bool, float] = {}
        for manual in (False, True, False, True):
            torch.manual_seed(0)
            m = RIMs(args.input, num_units=args.units, k=args.k, hidden_size=args.hidden,
                     cell=cell, dropout=0.0).train()  # fmt: skip
            m.manual_backward = manual
            x = torch.randn(args.time, args.batch, args.input)
            ms = per_step_ms(m, x, args.repeats)
            best[manual] = min(best.get(manual, ms), ms)
        print(
            f"{cell}: autograd {best[False]:.3f} ms/step, hand-written {best[True]:.3f} "
            f"ms/step, ratio {best[True] / best[False]:.2f}"
        )


if __name__ == "__main__":
    main()
