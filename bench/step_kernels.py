"""How many kernels one RIMs step launches, forward and backward, compiled (``--rims-compile``)
and eager.

With CUDA graphs (``--rims-graphs``) a training sequence costs its kernels, not their launches'
host time, and each small kernel still costs some microseconds on the device: at B=64 the
forward+backward over T=128 is about (kernels per step) x 128 small kernels. This counts them
from the code Inductor generates for the step bodies (``policies/compiled.py``): fused kernels
(Triton on a GPU, C++ loops on a CPU) and extern calls (matmuls, and ops Inductor cannot lower,
such as ``topk``). The CPU count is a lower bound for the GPU's, not a stand-in: the same
scheduler decides the fusion, but Triton splits reductions that C++ loops join (on an H200 a
compiled LSTM step launched 25 kernels where the CPU's launches 12; ``bench/RESULTS.md``).
Eager steps (what ``--rims-graphs`` replays without ``--rims-compile``) are counted as the aten
ops they run, views left out. ``baddbmm`` is one launch here and two on a GPU (it first copies
its addend into its output), which is why compiled steps use ``bmm`` and fuse the sums.

    python bench/step_kernels.py                 # CPU
    python bench/step_kernels.py --device cuda   # the kernels a GPU launches
    python bench/step_kernels.py --cells lstm --names   # one cell, each kernel named
    python bench/step_kernels.py --device cuda --profile   # and where a step's time goes
    python bench/step_kernels.py --device cuda --profile --tf32   # ... with TF32 matmuls
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from typing import NamedTuple

import torch
from torch._inductor.utils import run_and_get_code
from torch.utils._python_dispatch import TorchDispatchMode

from agents.precision import tf32_matmuls
from policies import RIMs

_LAUNCH = re.compile(
    r"(?P<extern>extern_kernels\.\w+|torch\.ops\.\w+\.\w+(?:\.\w+)?)\(|(?P<fused>\w+)(?:\.run)?\("
)


class Census(NamedTuple):
    """Launches in one compiled graph (``_launch_bodies``): fused kernels, extern calls, and
    their names in launch order."""

    fused: int
    extern: int
    names: list[str]


def _launch_bodies(code: str) -> list[str]:
    """The lines of the functions of an Inductor output module that launch its kernels:
    ``call`` (a function, or a method of a runner class), and the ``partition_N`` functions it
    runs when Inductor partitions the graph. A kernel's own source (a ``def`` too) lies in a
    string, at no function's indent, and is left out."""
    lines: list[str] = []
    indent = None  # the indent of the launching function's ``def`` while inside it
    for line in code.splitlines():
        head = re.match(r"^(\s*)def (\w+)\(", line)
        if head:
            launching = head[2] == "call" or re.fullmatch(r"partition_\d+", head[2])
            indent = len(head[1]) if launching else None
        elif indent is not None and line.strip():
            if len(line) - len(line.lstrip()) <= indent:
                indent = None  # code at the def's indent or less ends the function
            else:
                lines.append(line)
    return lines


def census(code: str) -> Census:
    """Count the kernel launches of one Inductor output module (see ``_launch_bodies``)."""
    fused = extern = 0
    names = []
    for line in _launch_bodies(code):
        text = line.strip()
        if text.startswith(("#", "assert", "del ")) or "reinterpret_tensor(" in text.split("(")[0]:
            continue
        call = text.split("=", 1)[1].strip() if re.match(r"^\w+ = ", text) else text
        match = _LAUNCH.match(call)
        if not match:
            continue
        if match["extern"]:
            extern += 1
            names.append(match["extern"].removesuffix(".default").split(".")[-1])
        elif match["fused"].startswith(("triton_", "cpp_fused")):
            fused += 1
            names.append(match["fused"].split("_")[0] + "_" + match["fused"].split("_")[-1])
    return Census(fused, extern, names)


def bench_core(device: torch.device, **options) -> RIMs:
    """The RIMs counted: input 512, 6 RIMs x 100, 4 active, dropout 0 (the PPO presets'), with
    ``options``."""
    return RIMs(512, 6, 4, 100, dropout=0.0, **options).to(device)


def step_codes(cell: str, elements: int, starts: bool, device: torch.device) -> list[str]:
    """The Inductor output code of the compiled forward and backward steps of one training
    call (T=2, B=16, input 512, 6 RIMs x 100, 4 active, dropout 0)."""
    torch._dynamo.reset()  # compile afresh, so that this configuration's code is captured
    core = bench_core(device, cell=cell, compile_steps=True)
    x = torch.randn(2, 16, elements, 512, device=device)  # (T, B, N, D)
    episode_starts = torch.zeros(2, 16, dtype=torch.bool, device=device) if starts else None

    def train_call() -> None:
        out, _, _ = core(x, core.initial_state(16, device), episode_starts)
        out.sum().backward()

    _, codes = run_and_get_code(train_call)
    return codes


VIEW_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "split", "split_with_sizes",
    "chunk", "slice", "select", "transpose", "t", "permute", "expand", "detach", "alias",
    "as_strided", "unbind",
})  # fmt: skip
"""Aten ops that only make views: no kernel."""


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops run inside it by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def eager_ops_per_step(cell: str, device: torch.device) -> tuple[float, float]:
    """Aten ops that launch a kernel (views left out) per step of an eager training call,
    forward and backward (input 512, 6 RIMs x 100, 4 active, B=16, with episode starts): the
    kernels a CUDA graph of the eager core replays (``--rims-graphs`` without compiled steps).
    The difference between T=16 and T=8, over 8."""
    core = bench_core(device, cell=cell)
    totals = []
    for T in (8, 16):
        x = torch.randn(T, 16, 512, device=device)
        starts = torch.zeros(T, 16, dtype=torch.bool, device=device)
        forward, backward = _OpCounter(), _OpCounter()
        with forward:
            out, _, _ = core(x, core.initial_state(16, device), starts)
        loss = out.sum()
        with backward:
            loss.backward()
        totals.append([sum(n for op, n in c.ops.items() if op not in VIEW_OPS)
                       for c in (forward, backward)])  # fmt: skip
    (f8, b8), (f16, b16) = totals
    return (f16 - f8) / 8, (b16 - b8) / 8


def profile(device: torch.device, T: int, B: int, rows: int) -> str:
    """A profiler table of one training call (forward+backward) of the compiled core with
    bfloat16 products, input 512, 6 RIMs x 100, 4 active, no CUDA graphs (so that each kernel
    shows), the kernels sorted by their own time on the device (CPU: by CPU time), and the
    device time per step."""
    core = bench_core(device, compile_steps=True, bf16_matmuls=True)
    x = torch.randn(T, B, 512, device=device)
    episode_starts = torch.zeros(T, B, dtype=torch.bool, device=device)
    cuda = device.type == "cuda"

    def train_call() -> None:
        out, _, _ = core(x, core.initial_state(B, device), episode_starts)
        out.sum().backward()
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(3):  # compile and warm up
        train_call()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        train_call()
    events = prof.key_averages()
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = events.table(sort_by=sort_by, row_limit=rows)
    if cuda:
        # The kernels' own events (as the table's footer counts them): an op's row carries
        # its kernels' time too, so summing every row would count it twice.
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                   and not e.is_user_annotation]  # fmt: skip
        total_us = sum(e.self_device_time_total for e in kernels)
        table += f"\ndevice time {total_us / 1e3:.2f} ms, {total_us / T:.1f} us per step (T={T})"
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cells", nargs="+", choices=["lstm", "gru"], default=["lstm", "gru"],
                        help="the cells counted")  # fmt: skip
    parser.add_argument("--names", action="store_true", help="list each graph's kernels")
    parser.add_argument(
        "--profile", action="store_true",
        help="then profile a training call at T=128, B=64 (on a CPU T=32, B=16)",
    )  # fmt: skip
    parser.add_argument("--tf32", action="store_true",
                        help="profile with TF32 matmuls (rims train --tf32)")  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device: {device}; torch {torch.__version__}; launches per step (fused + extern)")
    print(f"{'cell':<6}{'elements':>9}{'starts':>8}{'forward':>12}{'backward':>12}{'total':>7}")
    for cell in args.cells:
        for elements, starts in ((1, True), (1, False), (3, True)):
            counts = [census(code) for code in step_codes(cell, elements, starts, device)]
            counts = [c for c in counts if c.fused + c.extern]
            if len(counts) != 2:  # say what there is, and go on to the next case
                print(f"{cell:<6}{elements:>9}{str(starts):>8}  expected a forward and a "
                      f"backward step graph, got {len(counts)}: {counts}", flush=True)  # fmt: skip
                continue
            fwd, bwd = counts
            total = fwd.fused + fwd.extern + bwd.fused + bwd.extern
            print(
                f"{cell:<6}{elements:>9}{str(starts):>8}"
                f"{f'{fwd.fused}+{fwd.extern}':>12}{f'{bwd.fused}+{bwd.extern}':>12}{total:>7}",
                flush=True,
            )
            if args.names:
                print("   forward: ", " ".join(fwd.names))
                print("   backward:", " ".join(bwd.names))
    print("eager steps (--rims-graphs without --rims-compile replays these): kernels per step")
    for cell in args.cells:
        forward, backward = eager_ops_per_step(cell, device)
        print(f"{cell:<6}forward {forward:.0f}  backward {backward:.0f}", flush=True)
    if args.profile:
        gpu = device.type == "cuda"
        with tf32_matmuls(args.tf32):
            print(profile(device, 128 if gpu else 32, 64 if gpu else 16, rows=25))


if __name__ == "__main__":
    main()
