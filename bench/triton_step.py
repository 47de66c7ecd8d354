"""Check, time and profile the Triton steps of ``policies.triton_steps`` (``--rims-triton``).

A step there is three cuBLAS matmuls with one hand-written kernel after each
(``policies.triton_kernels``), forward and backward, in place of a compiled step's 13 and 12
launches on a GPU. This script:

- ``--check``: runs 4 steps forward by the kernels and by ``RIMs._step_body``, and compares
  every output and saved intermediate; then each backward step by the kernels and by
  ``policies.rims_grad.step_backward``. Float64 and float32, with and without episode starts.
- ``--time``: T steps forward and T backward of each (kernels, eager, compiled), each
  captured as one CUDA graph and replayed; ``--warps 2 4 8`` times the kernels at each of
  those warp counts (``triton_steps.NUM_WARPS``).
- ``--profile``: each kernel's share of T steps each way.
- ``--aot``: compiles the six kernels for a GPU target (sm_90 by default) through Triton's
  whole pipeline to a cubin, without a GPU, and prints each one's registers, spills and shared
  memory for 1 to 8 warps: whether Triton's compiler, not only its interpreter, takes them.

    TRITON_INTERPRET=1 python bench/triton_step.py --device cpu --check   # Triton's interpreter
    TRITON_INTERPRET=1 python bench/triton_step.py --device cpu --time --T 3 --batch 4  # runs
    python bench/triton_step.py --aot                            # compile only, no GPU needed
    python bench/triton_step.py --device cuda --profile   # each kernel's time
    python bench/triton_step.py --device cuda --check --time              # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import torch
from torch import Tensor

from policies import RIMs, triton_steps
from policies.rims_grad import _COMPILED_STEP_BACKWARD, step_backward
from policies.spec import triton_unsupported
from policies.step_grads import StepGrads
from policies.triton_steps import kernels

KERNELS = triton_steps.KERNEL_NAMES


def supported(core: RIMs) -> bool:
    """The configuration the kernels are written for, in train mode."""
    dropout = core.dropout if core._attention_dropout_on() else 0.0
    return triton_unsupported(core.input_heads, dropout) is None


def _run_step(body, core: RIMs, hs: list[Tensor], t: int, inp) -> tuple[list[Tensor], Tensor, dict]:
    """Step ``t`` of ``core`` by ``body`` (``RIMs._step_body``'s signature) from the states
    ``hs`` ``(U, B, H)`` and the sequence's ``StepInputs``: the new states, the mask ``(U, B)``
    and the intermediates."""
    keep = None if inp.keep is None else inp.keep[t]
    out, mask, _, _, intermediates = body(
        core, hs, inp.keys[t], inp.value_gates[:, t], None, keep, inp, True
    )
    return out, mask, intermediates


def triton_step(core: RIMs, hs: list[Tensor], t: int, inp) -> tuple[list[Tensor], Tensor, dict]:
    """Step ``t`` by ``triton_steps.step``."""
    return _run_step(triton_steps.step, core, hs, t, inp)


def reference_step(core: RIMs, hs: list[Tensor], t: int, inp) -> tuple[list[Tensor], Tensor, dict]:
    """The same step through ``RIMs._step_body``."""
    return _run_step(RIMs._step_body, core, hs, t, inp)


def _resets(inp, t: int) -> tuple[Tensor | None, Tensor | None]:
    """Step ``t``'s episode-start factor ``(B,)`` and the next step's (ones after the last), as
    a backward step takes them; None without episode starts."""
    if inp.keep is None:
        return None, None
    keep = inp.keep[t]
    return keep, inp.keep[t + 1] if t + 1 < len(inp.keep) else torch.ones_like(keep)


def triton_step_backward(
    core: RIMs, inp, s: dict, weights_t: tuple[Tensor, Tensor, Tensor, None], d_out: Tensor,
    dh: Tensor, dh_product: Tensor, dc: Tensor, t: int,
) -> StepGrads:  # fmt: skip
    """``triton_steps.step_backward`` of step ``t``: ``dh`` comes without ``dh_product`` (the
    state matmul's product of the step after) and before the next step's reset, and goes
    back the same way, with its product beside it."""
    keep, keep_next = _resets(inp, t)
    one = d_out.new_ones(())  # not read by the kernels, nor are the mask and read_slope
    return triton_steps.step_backward(core, inp, s, weights_t, one, d_out, dh, dh_product, dc,
                                      None, None, inp.keys[t], inp.value_gates[:, t], keep,
                                      keep_next)  # fmt: skip


def setup(device: str, dtype: torch.dtype, T: int, B: int, training: bool = False, seed: int = 0):
    """A benchmark core (input 512, 6 RIMs x 100, 4 active, dropout 0), its step inputs for a
    random sequence with episode starts (as for training, or for acting), and random states."""
    torch.manual_seed(seed)
    core = RIMs(512, 6, 4, 100, dropout=0.0).to(device=device, dtype=dtype).train()
    x = torch.randn(T, B, 1, 512, device=device, dtype=dtype)
    starts = torch.rand(T, B, device=device) < 0.1
    with torch.set_grad_enabled(training):  # training: the scaled communication weight
        inp = core._prepare(x, starts, True)
    hs = [torch.randn(6, B, 100, device=device, dtype=dtype) * 0.5 for _ in range(2)]
    return core, inp, hs


def _pairs(sa: dict, sb: dict) -> dict[str, tuple[Tensor, Tensor]]:
    """The saved intermediates of two steps, by name, side by side."""
    pairs = {"kept": (sa["kept"], sb["kept"]), "query": (sa["query"], sb["query"]),
             "read": (sa["read"], sb["read"])}  # fmt: skip
    pairs |= {f"{n} reset": (x, y) for n, x, y in zip("hc", sa["hs"], sb["hs"])}
    pairs |= {f"act {n}": (x, y) for n, x, y in zip("ifgoT", sa["acts"], sb["acts"])}
    names = ("q", "k", "v", "attn", "read c", "gate", "tanh out")
    return pairs | {n: (x, y) for n, x, y in zip(names, sa["comm"], sb["comm"])}


def check(device: str, dtype: torch.dtype, starts: bool, T: int = 4, B: int = 5) -> bool:
    """Run ``T`` steps both ways from the same states (with some episode starts, or none) and
    compare every output and saved intermediate. Returns whether all agree."""
    core, inp, hs = setup(device, dtype, T, B)
    assert supported(core)
    if not starts:
        inp.keep = None
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    ok = True
    with torch.no_grad():
        a, b = hs, hs
        for t in range(T):
            a, mask_a, sa = triton_step(core, a, t, inp)
            b, mask_b, sb = reference_step(core, b, t, inp)
            pairs = {"h": (a[0], b[0]), "c": (a[1], b[1]), **_pairs(sa, sb)}
            bad = [n for n, (x, y) in pairs.items() if not torch.allclose(x, y, **tol)]
            same_mask = torch.equal(mask_a, mask_b) and torch.equal(sa["mask"], sb["mask"])
            k_active = bool((mask_a.sum(0) == core.k).all())
            good = not bad and same_mask and k_active
            where = f"step {t}, {dtype}, {'with' if starts else 'no'} episode starts"
            print(f"{'ok  ' if good else 'FAIL'} {where}: {', '.join(bad) or 'all tensors agree'}"
                  f"; masks equal: {same_mask}; exactly k active: {k_active}")  # fmt: skip
            ok &= good
    return ok


def weights_t(core: RIMs, inp) -> tuple[Tensor, Tensor, Tensor, None]:
    """The transposed state, communication and output weights, as the backward takes them (and
    None for the input-to-gate weight: the kernels read one element, the fused path)."""
    return (core.state_weight.transpose(1, 2), inp.comm_weight.transpose(1, 2),
            core.comm_out.transpose(1, 2), None)  # fmt: skip


def check_backward(device: str, dtype: torch.dtype, starts: bool, T: int = 4, B: int = 5) -> bool:
    """Each backward step both ways (``step_backward`` eagerly), each from its own forward's
    saved steps (which ``check`` compares) and the same incoming gradients; compare what each
    hands on. Returns whether all agree."""
    core, inp, hs = setup(device, dtype, T, B, training=True)
    if not starts:
        inp.keep = None
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    weights = weights_t(core, inp)
    ok = True
    with torch.no_grad():
        steps, kernel_steps, states, kernel_states = [], [], hs, hs
        for t in range(T):
            states, _, saved = reference_step(core, states, t, inp)
            steps.append(saved)
            kernel_states, _, saved = triton_step(core, kernel_states, t, inp)
            kernel_steps.append(saved)
        d_out = torch.randn(T, *hs[0].shape, device=device, dtype=dtype)
        dh, dc = torch.randn_like(hs[0]), torch.randn_like(hs[1])
        for t in reversed(range(T)):
            s = steps[t]
            read = s["read"].view(dh.shape[:2])  # (U,B,1,1) -> (U,B)
            keep, keep_next = _resets(inp, t)
            ref = step_backward(
                core, inp, s, weights, d_out.new_ones(()), d_out[t], dh, None, dc,
                s["mask"].to(dtype), (read * (1 - read)).view(*read.shape, 1, 1),
                inp.keys[t], inp.value_gates[:, t], keep, keep_next,
            )  # fmt: skip
            got = triton_step_backward(core, inp, kernel_steps[t], weights, d_out[t], dh,
                                       torch.zeros_like(dh), dc, t)  # fmt: skip
            pairs = {"dh": (got.dh + got.dh_product, ref.dh), "dc": (got.dc, ref.dc)}
            pairs |= {n: (getattr(got, n), getattr(ref, n))
                      for n in ("d_qkv", "d_o", "d_gx", "d_scores", "d_hq")}  # fmt: skip
            bad = [n for n, (x, y) in pairs.items() if not torch.allclose(x, y, **tol)]
            print(f"{'FAIL' if bad else 'ok  '} backward step {t}, {dtype}, "
                  f"{'with' if starts else 'no'} episode starts: "
                  f"{', '.join(bad) or 'all gradients agree'}")  # fmt: skip
            ok &= not bad
            dh, dc = ref.dh, ref.dc
    return ok


@contextlib.contextmanager
def all_warps(warps: int | None) -> Iterator[None]:
    """Every kernel launched with ``warps`` warps per program (None: as the library says)."""
    saved = dict(triton_steps.NUM_WARPS)
    if warps is not None:
        triton_steps.NUM_WARPS.update(dict.fromkeys(saved, warps))
    try:
        yield
    finally:
        triton_steps.NUM_WARPS.update(saved)


def _kernel_rows(warps: tuple[int, ...]) -> list[tuple[str, int | None]]:
    """The Triton rows to time: one per warp count, or the library's setting."""
    return [(f"triton, {w} warps", w) for w in warps] or [("triton kernels", None)]


def time_forward(device: str, T: int, B: int, repeats: int, warps: tuple[int, ...] = ()) -> None:
    """A T-step forward (float32, no grad, the intermediates kept as for training) by the
    Triton kernels (once per warp count in ``warps``) and by the library's eager and compiled
    steps, each captured as one CUDA graph and replayed; the median of ``repeats`` replays."""
    core, inp, hs = setup(device, torch.float32, T, B)
    slices = inp.slices()

    def library(compiled: bool):
        def step(states: list[Tensor], t: int) -> list[Tensor]:
            core.compile_steps = compiled
            return core._step(slices[t], states, inp, [])[0]

        return step

    def kernels_step(states: list[Tensor], t: int) -> list[Tensor]:
        return triton_step(core, states, t, inp)[0]

    variants = [(name, kernels_step, w) for name, w in _kernel_rows(warps)]
    variants += [("eager step", library(False), None), ("compiled step", library(True), None)]
    for name, step, w in variants:

        def run(step=step) -> None:
            states = hs
            for t in range(T):
                states = step(states, t)

        with all_warps(w):
            ms = replay_ms(run, repeats, device)
        print(f"{name:<16} forward, T={T}, B={B}: {ms:.2f} ms", flush=True)


def time_backward(device: str, T: int, B: int, repeats: int, warps: tuple[int, ...] = ()) -> None:
    """The T backward steps of a training call (float32), by the Triton kernels (after the
    Triton forward; once per warp count in ``warps``) and by the library's eager and compiled
    steps (after its forward), each
    captured as one CUDA graph and replayed; the median of ``repeats`` replays. What runs once
    per call around the loop (the weights' gradients) is the same both ways and left out."""
    core, inp, hs = setup(device, torch.float32, T, B, training=True)
    weights = weights_t(core, inp)
    d_out = torch.randn(T, *hs[0].shape, device=device)
    ones = torch.ones_like(inp.keep[0])
    with torch.no_grad():
        triton_saved, library_saved, a, b = [], [], hs, hs
        for t in range(T):
            a, _, sa = triton_step(core, a, t, inp)
            b, _, sb = reference_step(core, b, t, inp)
            triton_saved.append(sa)
            library_saved.append(sb)
    reads = [s["read"].view(hs[0].shape[:2]) for s in library_saved]
    slopes = [(r * (1 - r)).view(*r.shape, 1, 1) for r in reads]
    masks = [s["mask"].float() for s in library_saved]

    def triton_loop() -> None:
        triton_backward(core, inp, weights, triton_saved, d_out)

    def library_loop(compiled: bool):
        def loop() -> None:
            step = _COMPILED_STEP_BACKWARD if compiled else step_backward
            core.compile_steps = compiled
            dh, dc = torch.zeros_like(hs[0]), torch.zeros_like(hs[1])
            dp = torch.zeros_like(dh) if compiled else None
            keep_next, one = ones, d_out.new_ones(())
            for t in reversed(range(T)):
                g = step(core, inp, library_saved[t], weights, one, d_out[t], dh, dp, dc,
                         masks[t], slopes[t], inp.keys[t], inp.value_gates[:, t],
                         inp.keep[t], keep_next)  # fmt: skip
                dh, dp, dc, keep_next = g.dh, g.dh_product, g.dc, inp.keep[t]

        return loop

    loops = [(name, triton_loop, w) for name, w in _kernel_rows(warps)]
    loops += [
        ("eager step", library_loop(False), None),
        ("compiled step", library_loop(True), None),
    ]
    for name, loop, w in loops:
        with all_warps(w):
            ms = replay_ms(loop, repeats, device)
        print(f"{name:<16} backward, T={T}, B={B}: {ms:.2f} ms", flush=True)


def triton_backward(core: RIMs, inp, weights, saved: list[dict], d_out: Tensor) -> StepGrads:
    """The backward steps of a whole sequence by the Triton kernels, from zero gradients after
    the last step and the output gradients d_out ``(T, U, B, H)``; the first step's grads."""
    dh = torch.zeros_like(d_out[0])
    dh_product, dc = torch.zeros_like(dh), torch.zeros_like(dh)
    for t in reversed(range(len(saved))):
        s = saved[t]
        g = triton_step_backward(core, inp, s, weights, d_out[t], dh, dh_product, dc, t)
        dh, dh_product, dc = g.dh, g.dh_product, g.dc
    return g


def replay_ms(run, repeats: int, device: str) -> float:
    """Warm ``run`` up (compiling what it compiles), capture it as one CUDA graph, and return
    the median time of ``repeats`` replays in milliseconds. On a CPU (Triton's interpreter)
    ``run`` runs once, untimed (NaN): a check that the loops run."""
    if not device.startswith("cuda"):
        with torch.no_grad():
            run()
        return float("nan")
    with torch.no_grad():
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def profile(device: str, T: int, B: int) -> str:
    """A profiler table of T Triton steps forward and T backward (float32, no graphs, so that
    each kernel shows), sorted by the kernels' own time on the device (on a CPU: by CPU time):
    where a step's time goes, kernel by kernel."""
    core, inp, hs = setup(device, torch.float32, T, B, training=True)
    weights = weights_t(core, inp)
    d_out = torch.randn(T, *hs[0].shape, device=device)

    def run() -> None:
        with torch.no_grad():
            states, saved = hs, []
            for t in range(T):
                states, _, s = triton_step(core, states, t, inp)
                saved.append(s)
            triton_backward(core, inp, weights, saved, d_out)

    cuda = device.startswith("cuda")
    run()  # compile the kernels
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        torch.cuda.synchronize()
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize()
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=15)


AOT_BUILDS = (("lstm", "fp32", (1, 2, 4, 8)), ("gru", "fp32", (4,)), ("linear", "fp32", (4,)),
              ("lstm", "fp64", (4,)))  # fmt: skip
"""What ``--aot`` compiles: LSTM kernels in float32 (the timed dtype) at each warp count, GRU
ones and LSTM ones with the linear communication output at Triton's default, and LSTM ones in
float64 (the device checks' dtype)."""


def aot(arch: int) -> bool:
    """Compile the six kernels, for the benchmark core's sizes (6 RIMs x 100, key 64,
    communication 4 heads x 32), to cubins for NVIDIA compute capability ``arch`` (90:
    H100/H200), through Triton's whole pipeline and ptxas, without a GPU, as ``AOT_BUILDS``
    says; print each one's registers, stack, shared and local memory (local: spilled
    registers). Returns whether all compiled."""
    import triton
    from triton.backends.compiler import GPUTarget

    core = RIMs(512, 6, 4, 100, dropout=0.0)
    U, H, dk = core.num_units, core.hidden_size, core.input_key_size
    constexprs = dict(
        U=U, H=H, K=core.k, DK=dk, CH=core.comm_heads, CDK=core.comm_key_size,
        CDV=core.comm_value_size, UP=triton_steps.next_pow2(U), HP=triton_steps.next_pow2(H),
        DKP=triton_steps.next_pow2(dk), CDKP=triton_steps.next_pow2(core.comm_key_size),
        CDVP=triton_steps.next_pow2(core.comm_value_size), HAS_KEEP=True, HAS_NULL=False,
    )  # fmt: skip
    cells = {"lstm": dict(LSTM=True, G=4 * H, GATE=True),
             "gru": dict(LSTM=False, G=3 * H, GATE=True),
             "linear": dict(LSTM=True, G=4 * H, GATE=False)}  # fmt: skip
    scalars = {"B": "i32", "vg_stride_u": "i32", "vg_stride_b": "i32", "scale": "fp32"}
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    cuobjdump = triton.knobs.nvidia.cuobjdump.path
    ok = True
    builds = [(name, cell, dtype, w) for cell, dtype, warps in AOT_BUILDS for name in KERNELS
              for w in warps]  # fmt: skip
    for name, cell, dtype, w in builds:
        fn = getattr(kernels, name)
        signature = {
            p.name: "constexpr" if p.is_constexpr
            else scalars.get(p.name, "*i1" if p.name == "mask" else f"*{dtype}")
            for p in fn.params
        }  # fmt: skip
        given = constexprs | cells[cell]
        values = {p.name: given[p.name] for p in fn.params if p.is_constexpr}
        src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=values)
        try:
            options = backend.parse_options({"num_warps": w}).__dict__
            cubin = triton.compile(src, target=target, options=options).asm["cubin"]
        except Exception as err:  # noqa: BLE001 -- report which kernel, and go on
            print(f"FAIL {cell} {dtype} {name}, {w} warps: {type(err).__name__}: {err}",
                  flush=True)  # fmt: skip
            ok = False
            continue
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True,
                                   text=True, check=True).stdout  # fmt: skip
        figures = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
        reg, stack, shared, local = figures.groups() if figures else ("?",) * 4
        print(f"ok   sm_{arch} {cell} {dtype} {name:<22} {w} warps: {reg:>3} registers, "
              f"stack {stack}, shared {shared}, local {local}", flush=True)  # fmt: skip
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1")
    parser.add_argument("--check", action="store_true", help="compare with RIMs._step_body")
    parser.add_argument("--time", action="store_true",
                        help="time T steps each way (a CPU: run them once)")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="a profiler table of T steps each way, kernel by kernel")  # fmt: skip
    parser.add_argument("--aot", action="store_true",
                        help="compile the kernels for a GPU target, without a GPU")  # fmt: skip
    parser.add_argument("--arch", type=int, default=90,
                        help="--aot's compute capability (90: H100/H200, 80: A100)")  # fmt: skip
    parser.add_argument("--warps", type=int, nargs="+", default=[],
                        help="--time the kernels at each of these warp counts")  # fmt: skip
    parser.add_argument("--T", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    if kernels is None:
        print("Triton is not installed: nothing to run")
        return 2
    ok = aot(args.arch) if args.aot else True
    if not (args.check or args.time or args.profile):
        return 0 if ok else 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or --device cpu with TRITON_INTERPRET=1")
        return 2
    if not args.device.startswith("cuda") and not kernels.INTERPRETED:
        print(f"--device {args.device} needs Triton's interpreter: set TRITON_INTERPRET=1")
        return 2
    if args.check:
        for dtype in (torch.float64, torch.float32):
            for starts in (True, False):
                ok &= check(args.device, dtype, starts)
                ok &= check_backward(args.device, dtype, starts)
    if args.time:
        warps = tuple(args.warps)
        time_forward(args.device, args.T, args.batch, repeats=20, warps=warps)
        time_backward(args.device, args.T, args.batch, repeats=20, warps=warps)
    if args.profile:
        print(profile(args.device, args.T, args.batch))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
