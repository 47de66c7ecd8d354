"""Speed of the RIMs core against nn.LSTM (whole sequence) and an nn.LSTMCell loop.

Recurrent-PPO shapes: input 512, 6 RIMs x 100 (4 active) vs LSTM(600). Prints, per batch size,
the median time of a rollout step (T=1, no grad), a forward over T steps and a forward+backward
over T steps, and the ratios to both LSTM baselines, all measured in one run.

    python bench/core_speed.py                 # CPU: T=32, B in 8/16/64
    python bench/core_speed.py --device cuda   # GPU: T=128, B in 8/64/512
    python bench/core_speed.py --public-rims PATH/RIM.py   # add the public implementation
    python bench/core_speed.py --cores "rims-lstm drop 0"  # one row (and the baselines)
    python bench/core_speed.py --inductor max_autotune=True   # Inductor settings for `comp`
    python bench/core_speed.py --device cuda --tf32   # float32 matmuls on TF32 tensor cores

cuDNN runs ``nn.LSTM``'s float32 products on TF32 tensor cores by default (PyTorch's cuDNN RNN
setting), while cuBLAS matmuls (everything else here) stay in full float32 unless ``--tf32``
(``rims train --tf32``) allows TF32. So on a GPU the ``nn.LSTM(600) fp32`` row times cuDNN in
full float32 too, and the ratios to either row compare like with like.

``rims-*`` rows use the paper's attention dropout 0.1 (autograd through the time loop);
``rims-* drop 0`` rows are the PPO presets' setting, trained through the hand-written backward;
``bf16`` computes the large state-independent matmuls from bfloat16 operands (``--rims-bf16``);
``comp`` runs each step, forward and backward, through torch.compile (``--rims-compile``; the
warm-up calls compile, so compiling is not in the figures). ``graphs`` rows (GPU only) replay
each figure's forward (and backward) from CUDA graphs captured in the warm-up calls
(``--rims-graphs``, ``policies/graphs.py``); ``triton`` runs each step as the hand-written
Triton kernels of ``policies/triton_kernels.py`` (``--rims-triton``; GPU rows only).
``rims-lstm set 49x64`` reads a set of 49 elements of 64 features a step (the 7x7 positions
of the Atari CNN's feature map, ``--rims-spatial``; drop 0): each step reads the values (the
products are not precomputed for so large a set), trained through the hand-written backward.
``--public-rims`` takes the ``RIM.py`` of a checkout of dido1998/Recurrent-Independent-Mechanisms
(not shipped here) and times its ``RIMCell`` stepped over T at the same sizes (its communication
value size is forced to the RIM size, 100).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from agents.precision import tf32_cudnn_rnns, tf32_matmuls
from policies import GRUCore, LSTMCore, RIMs

FP32_LSTM = "nn.LSTM(600) fp32"
"""The baseline row timed with cuDNN's TF32 switched off for RNNs (GPU only)."""


class LSTMCellLoop(nn.Module):
    """nn.LSTMCell stepped in a Python loop: the shape of most public recurrent-PPO code."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.hidden_size = hidden_size

    def initial_state(self, batch: int, device: torch.device | str | None = None):
        z = torch.zeros(batch, self.hidden_size, device=device)
        return (z, z.clone())

    def forward(self, x, state, episode_starts=None):
        h, c = state
        outs = []
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
            outs.append(h)
        return torch.stack(outs), (h, c), None


class PublicRIMsLoop(nn.Module):
    """The public implementation's ``RIMCell`` (loaded from a file) stepped over the sequence."""

    def __init__(self, path: str, device: torch.device, cell: str) -> None:
        super().__init__()
        spec = importlib.util.spec_from_file_location("public_rim", path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"--public-rims: cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.cell = module.RIMCell(device, 512, 100, 6, 4, cell.upper(), input_value_size=400)
        self.lstm = cell == "lstm"

    def initial_state(self, batch: int, device: torch.device | str | None = None):
        z = torch.zeros(batch, 6, 100, device=device)
        return (z, z.clone()) if self.lstm else (z,)

    def forward(self, x, state, episode_starts=None):
        hs, cs = state[0], state[1] if self.lstm else None
        outs = []
        for t in range(x.shape[0]):
            hs, cs = self.cell(x[t], hs, cs)
            outs.append(hs.reshape(hs.shape[0], -1))  # (B, U, H) -> (B, U*H)
        return torch.stack(outs), (hs, cs), None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


SET_INPUTS = {"rims-lstm set 49x64": (49, 64)}
"""Rows whose core reads a set: their (elements, features) per step instead of 512 features."""


def measure(
    core: nn.Module, T: int, B: int, device: torch.device, repeats: int,
    elements: tuple[int, int] | None = None,
) -> dict:  # fmt: skip
    """Median times of ``core`` on random inputs ``(T, B, 512)``, or ``(T, B, N, D)`` for
    ``elements`` ``(N, D)``."""
    x = torch.randn(T, B, *(elements or (512,)), device=device)
    state = core.initial_state(B, device)

    def step() -> None:
        with torch.no_grad():
            core(x[:1], state)

    def forward() -> None:
        with torch.no_grad():
            core(x, state)

    def forward_backward() -> None:
        out, _, _ = core(x, state)
        out.sum().backward()

    return {
        "step_ms": 1e3 * median_time(step, device, repeats),
        "fwd_ms": 1e3 * median_time(forward, device, repeats),
        "fwdbwd_ms": 1e3 * median_time(forward_backward, device, repeats),
    }


def inductor_setting(setting: str) -> None:
    """Apply one ``KEY=VALUE`` to ``torch._inductor.config`` (VALUE a Python literal)."""
    import torch._inductor.config as config

    key, sep, text = setting.partition("=")
    if not sep:
        raise ValueError("expected KEY=VALUE")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare word: a string
    owner, _, name = key.rpartition(".")
    target = config
    for part in filter(None, owner.split(".")):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"no Inductor setting {key!r}")
    if not hasattr(target, name):
        raise ValueError(f"no Inductor setting {key!r}")
    setattr(target, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--time", type=int, default=None, help="T (default 32 CPU, 128 GPU)")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cores", nargs="+", default=None, metavar="NAME",
                        help="time only these rows (the LSTM baselines always run)")  # fmt: skip
    parser.add_argument(
        "--inductor", nargs="+", default=[], metavar="KEY=VALUE",
        help="torch._inductor.config settings for the compiled rows, e.g. max_autotune=True "
        "(Triton matmuls that can take the pointwise ops around them in)",
    )  # fmt: skip
    parser.add_argument("--tf32", action="store_true",
                        help="cuBLAS float32 matmuls may use TF32 (rims train --tf32)")  # fmt: skip
    parser.add_argument("--public-rims", default=None, metavar="RIM.py",
                        help="time the public implementation's RIMCell from this file")  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    T = args.time or (128 if gpu else 32)
    batches = args.batch or ([8, 64, 512] if gpu else [8, 16, 64])
    repeats = args.repeats or (20 if gpu else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    for setting in args.inductor:
        try:
            inductor_setting(setting)
        except ValueError as err:
            parser.error(f"--inductor {setting}: {err}")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; T={T}; input 512; 6 RIMs x 100, 4 active")

    def rims(**options) -> RIMs:
        """The benchmarked RIMs: input 512, 6 x 100, 4 active, with ``options``."""
        return RIMs(512, num_units=6, k=4, hidden_size=100, **options)

    cores = {
        "rims-lstm": rims(cell="lstm"),
        "rims-gru": rims(cell="gru"),
        "rims-lstm drop 0": rims(dropout=0.0),
        "rims-gru drop 0": rims(cell="gru", dropout=0.0),
        "rims-lstm drop 0 bf16": rims(dropout=0.0, bf16_matmuls=True),
        "rims-lstm drop 0 comp": rims(dropout=0.0, compile_steps=True),
        "rims-lstm d0 bf16 comp": rims(dropout=0.0, bf16_matmuls=True, compile_steps=True),
        "rims-lstm set 49x64": RIMs(64, num_units=6, k=4, hidden_size=100, dropout=0.0),
        # CUDA graphs (--rims-graphs; on the CPU these rows would run the eager core)
        **(
            {
                f"rims-lstm d0{extra} graphs": rims(
                    dropout=0.0,
                    cuda_graphs=True,
                    bf16_matmuls="bf16" in extra,
                    compile_steps="comp" in extra,
                    triton_steps="triton" in extra,
                )
                for extra in ("", " bf16", " comp", " bf16 comp", " triton", " bf16 triton")
            }
            if gpu
            else {}
        ),
        "nn.LSTM(600)": LSTMCore(512, 600),
        **({FP32_LSTM: LSTMCore(512, 600)} if gpu else {}),
        "nn.GRU(600)": GRUCore(512, 600),
        "LSTMCell(600) loop": LSTMCellLoop(512, 600),
    }
    if args.public_rims:
        cores["public rims-lstm"] = PublicRIMsLoop(args.public_rims, device, "lstm")
    unknown = set(args.cores or ()) - set(cores)
    if unknown:
        parser.error(f"unknown --cores {sorted(unknown)}; choose from {sorted(cores)}")
    # The two baselines first, so that each row prints (with its ratios) as soon as it is timed.
    baselines = ("nn.LSTM(600)", "LSTMCell(600) loop", *([FP32_LSTM] if gpu else []))
    order = [*baselines, *(n for n in cores if n not in baselines)]
    chosen = [n for n in order if n in baselines or not args.cores or n in args.cores]
    header = f"{'core':<22}{'B':>5}{'step ms':>10}{'fwd ms':>10}{'fwd+bwd ms':>12}"
    header += f"{'x LSTM':>9}{'x cell loop':>13}" + (f"{'x fp32 LSTM':>13}" if gpu else "")
    header += f"{'x public':>10}" if args.public_rims else ""
    print(f"float32 matmuls: {'TF32 allowed (--tf32)' if args.tf32 else 'full float32'}")
    print(header, flush=True)
    # The rows every other row is compared with, timed first at each batch size.
    first = [*baselines, *(["public rims-lstm"] if args.public_rims else [])]

    def timed(n: str, B: int) -> dict:
        """Row ``n`` measured at batch size ``B``."""
        with tf32_cudnn_rnns(False) if n == FP32_LSTM else nullcontext():
            return measure(cores[n].to(device).train(), T, B, device, repeats, SET_INPUTS.get(n))

    with tf32_matmuls(args.tf32):
        for B in batches:
            time_batch(B, first, chosen, baselines, timed, gpu)


def time_batch(
    B: int,
    first: list[str],
    chosen: list[str],
    baselines: tuple[str, ...],
    timed: Callable[[str, int], dict],
    gpu: bool,
) -> None:
    """Time and print every chosen row at batch size ``B``, the rows in ``first`` first (the
    ones the others are compared with)."""
    results = {n: timed(n, B) for n in first}
    for n in chosen:
        try:
            r = results.get(n) or timed(n, B)
        except Exception as err:  # a failed variant must not cost the rows after it
            if n in baselines:
                raise
            print(f"{n:<22}{B:>5}  failed: {type(err).__name__}: {str(err)[:200]}", flush=True)
            continue
        results[n] = r
        lstm, loop = results["nn.LSTM(600)"], results["LSTMCell(600) loop"]
        public = results.get("public rims-lstm")
        vs_lstm = r["fwdbwd_ms"] / lstm["fwdbwd_ms"]
        vs_loop = r["fwdbwd_ms"] / loop["fwdbwd_ms"]
        vs_fp32 = f"{r['fwdbwd_ms'] / results[FP32_LSTM]['fwdbwd_ms']:>13.2f}" if gpu else ""
        vs_public = f"{r['fwdbwd_ms'] / public['fwdbwd_ms']:>10.2f}" if public else ""
        print(
            f"{n:<22}{B:>5}{r['step_ms']:>10.3f}{r['fwd_ms']:>10.2f}{r['fwdbwd_ms']:>12.2f}"
            f"{vs_lstm:>9.2f}{vs_loop:>13.2f}{vs_fp32}{vs_public}",
            flush=True,
        )


if __name__ == "__main__":
    main()
