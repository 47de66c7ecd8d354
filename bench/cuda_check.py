"""RIMs on a GPU computes what it computes on the CPU: run this on a lent GPU before timing.

For both cells, in float64 on the device: the hand-written backward gives autograd's gradients
(through the outputs and the null attention, which ``--selection-balance`` trains);
outputs, masks and gradients match the CPU's; exactly k RIMs are active; inactive RIMs keep their
state bit for bit; episode starts reset; with ``bf16_matmuls`` the device agrees with the CPU to
bfloat16 precision; with ``compile_steps`` (Inductor's Triton kernels) and with
``triton_steps`` (the hand-written ones of ``policies.triton_kernels``) it agrees with the
eager steps; with
``cuda_graphs`` (replayed CUDA graphs) training steps with optimizer updates between them, acting
steps and out-of-order backwards agree with the eager core; tied RIMs are chosen by index.
Prints one line per check and exits 1 on a failure.

    python bench/cuda_check.py                  # needs CUDA; without it, says so and exits 0
    python bench/cuda_check.py --only graphs    # the CUDA-graph checks alone
    python bench/cuda_check.py --only compiled  # compiled steps against eager ones alone
    python bench/cuda_check.py --only triton    # the hand-written Triton steps alone
    TRITON_INTERPRET=1 python bench/cuda_check.py --device cpu --only triton  # (interpreter)
    python bench/cuda_check.py --device cpu     # the script itself, against the CPU (trivial)
"""

from __future__ import annotations

import argparse
import sys

import torch

from policies import triton_steps
from policies.rims import RIMs


def run(
    cell: str, device: str, manual: bool, bf16: bool = False, compiled: bool = False,
    triton: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list]:  # fmt: skip
    """float64, 4 of 6 active; or with ``bf16`` (bfloat16 products): float32, all 6 active, so
    rounding differences between devices cannot flip the selection. ``compiled``: each step
    through torch.compile (Triton kernels on a GPU); ``triton``: through the hand-written
    Triton kernels, which must run (a fallback to the usual steps raises). The loss weighs the
    outputs and the null attention."""
    torch.manual_seed(0)
    dtype = torch.float32 if bf16 else torch.float64
    core = RIMs(10, num_units=6, k=6 if bf16 else 4, hidden_size=8, cell=cell, input_key_size=16,
                dropout=0.0, bf16_matmuls=bf16, compile_steps=compiled,
                triton_steps=triton)  # fmt: skip
    core = core.to(device=device, dtype=dtype).train()
    core.manual_backward = manual
    x = torch.randn(9, 5, 10, dtype=dtype).to(device).requires_grad_()
    starts = torch.zeros(9, 5, dtype=torch.bool, device=device)
    starts[4, 2] = starts[0, 1] = True
    state = core.initial_state(5)
    out, _, info = core(x, state, starts)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=dtype, device=device).view_as(out)).sum()
    null = info.null_attention
    loss = loss + (null * torch.linspace(1, -1, null.numel(), dtype=dtype, device=device)
                   .view_as(null)).sum()  # fmt: skip
    loss.backward()
    grads = [x.grad, *(p.grad for p in core.parameters())]
    if triton and core._triton_warned:
        raise RuntimeError(f"the Triton steps did not run: {sorted(core._triton_warned)}")
    return out.detach().cpu(), info.mask.cpu(), [g.cpu() for g in grads]


def graph_checks(cell: str, device: str, compiled: bool, check, triton: bool = False) -> None:
    """A core with ``cuda_graphs`` against the same core run eagerly (float64): three training
    steps with an SGD update between them, two forwards whose backwards run in reverse order,
    and five acting steps that carry the state."""
    torch.manual_seed(2)
    options = dict(num_units=6, k=4, hidden_size=8, cell=cell, input_key_size=16, dropout=0.0,
                   compile_steps=compiled, triton_steps=triton)  # fmt: skip
    eager = RIMs(10, **options).to(device=device, dtype=torch.float64)
    graphed = RIMs(10, **options, cuda_graphs=True).to(device=device, dtype=torch.float64)
    graphed.load_state_dict(eager.state_dict())
    tag = f"{cell}{', compiled steps' if compiled else ''}{', Triton steps' if triton else ''}"

    def batch(seed: int, T: int = 9):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(T, 5, 10, generator=g, dtype=torch.float64).to(device).requires_grad_()
        state = tuple(torch.randn(5, 6, 8, generator=g, dtype=torch.float64).to(device)
                      for _ in eager.initial_state(1))  # fmt: skip
        starts = (torch.rand(T, 5, generator=g) < 0.2).to(device)
        return x, state, starts

    def loss(out, state, info):
        w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
        value = (out * w).sum() + sum((s * s).sum() for s in state)
        return value + (info.null_attention * info.null_attention).sum()

    def grads(core, x, value):
        wrt = [x, *core.parameters()]
        found = torch.autograd.grad(value, wrt, allow_unused=True)
        return [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, found)]

    def close(a, b):
        return all(torch.allclose(u, v, rtol=1e-9, atol=1e-11) for u, v in zip(a, b))

    ok = True
    for step in range(3):
        x, state, starts = batch(step)
        (a, sa, ia), (b, sb, ib) = graphed(x, state, starts), eager(x, state, starts)
        ga, gb = grads(graphed, x, loss(a, sa, ia)), grads(eager, x, loss(b, sb, ib))
        ok &= close([a, *sa], [b, *sb]) and torch.equal(ia.mask, ib.mask) and close(ga, gb)
        with torch.no_grad():  # an SGD step on both: the replays must read the new weights
            for core, g in ((graphed, ga), (eager, gb)):
                for p, d in zip(core.parameters(), g[1:]):
                    p.sub_(0.05 * d)
    check(f"{tag}: graphed training steps == eager (float64, updates between)", ok)
    (x1, s1, st1), (x2, s2, st2) = batch(10), batch(11)
    a1, a2 = graphed(x1, s1, st1), graphed(x2, s2, st2)
    g2, g1 = grads(graphed, x2, loss(*a2)), grads(graphed, x1, loss(*a1))
    e1, e2 = (
        grads(eager, x1, loss(*eager(x1, s1, st1))),
        grads(eager, x2, loss(*eager(x2, s2, st2))),
    )
    check(f"{tag}: graphed backwards out of order == eager", close(g1, e1) and close(g2, e2))
    graphed.eval(), eager.eval()
    state_a = state_b = batch(20, T=1)[1]
    ok = True
    with torch.no_grad():
        for step in range(5):
            x, _, starts = batch(30 + step, T=1)
            a, state_a, ia = graphed(x, state_a, starts)
            b, state_b, ib = eager(x, state_b, starts)
            ok &= close([a, *state_a], [b, *state_b]) and torch.equal(ia.mask, ib.mask)
    check(f"{tag}: graphed acting steps == eager (state carried)", ok)
    captured = len(graphed._graphs.graphs) if graphed._graphs is not None else 0
    check(f"{tag}: graphs captured, one per signature (training, acting)", captured == 2)


def agrees_with_eager(what: str, got: tuple, eager: tuple, check) -> None:
    """The ``run`` ``got`` has the eager ``run``'s masks exactly, and its outputs and gradients
    to float64 rounding."""
    check(f"{what}, device masks == eager", torch.equal(got[1], eager[1]))
    check(f"{what}, outputs and gradients == eager (float64)",
          all(torch.allclose(a, b, rtol=1e-9, atol=1e-11)
              for a, b in zip([got[0], *got[2]], [eager[0], *eager[2]])))  # fmt: skip


def compiled_checks(cell: str, device: str, eager: tuple, check) -> None:
    """Compiled steps (``--rims-compile``) compute the same function as the eager ``run``
    ``eager``."""
    compiled = run(cell, device, manual=True, compiled=True)
    agrees_with_eager(f"{cell}: compiled steps", compiled, eager, check)


def triton_checks(cell: str, device: str, check) -> bool:
    """Hand-written Triton steps (``--rims-triton``) compute the same function as the eager
    steps, and, on CUDA, as graphs. Where they cannot run (no Triton; a CPU without its
    interpreter) says why and returns False."""
    problem = triton_steps.unavailable(torch.device(device))
    if problem is not None:
        print(f"skip {cell}: Triton steps ({problem})", flush=True)
        return False
    eager = run(cell, device, manual=True)
    kernels = run(cell, device, manual=True, triton=True)
    agrees_with_eager(f"{cell}: Triton steps", kernels, eager, check)
    if device.startswith("cuda"):
        graph_checks(cell, device, False, check, triton=True)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU")
    parser.add_argument("--only", choices=["graphs", "compiled", "triton"], default=None,
                        help="run only these checks")  # fmt: skip
    args = parser.parse_args()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    failures = 0

    def check(name: str, ok: bool) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    print(f"device: {name}; torch {torch.__version__}")
    if args.only == "triton":
        for cell in ("lstm", "gru"):
            if not triton_checks(cell, device, check):
                return 2
        print(f"{failures} failure(s)")
        return 1 if failures else 0
    if device.startswith("cuda") and args.only != "compiled":
        for cell, compiled in (("lstm", False), ("gru", False), ("lstm", True)):
            graph_checks(cell, device, compiled, check)
    if args.only == "graphs":
        print(f"{failures} failure(s)")
        return 1 if failures else 0
    for cell in ("lstm", "gru"):
        dev_manual = run(cell, device, manual=True)
        if args.only == "compiled":
            compiled_checks(cell, device, dev_manual, check)
            continue
        cpu = run(cell, "cpu", manual=True)
        dev_auto = run(cell, device, manual=False)
        close = all(torch.allclose(a, b, rtol=1e-9, atol=1e-11)
                    for a, b in zip(dev_manual[2], dev_auto[2]))  # fmt: skip
        check(f"{cell}: hand-written backward == autograd on the device (float64)", close)
        check(f"{cell}: device masks == CPU masks", torch.equal(dev_manual[1], cpu[1]))
        check(f"{cell}: device outputs == CPU outputs",
              torch.allclose(dev_manual[0], cpu[0], rtol=1e-9, atol=1e-11))  # fmt: skip
        close = all(
            torch.allclose(a, b, rtol=1e-7, atol=1e-9) for a, b in zip(dev_manual[2], cpu[2])
        )
        check(f"{cell}: device gradients == CPU gradients", close)
        check(f"{cell}: exactly k active", bool((dev_manual[1].sum(-1) == 4).all()))
        compiled_checks(cell, device, dev_manual, check)
        triton_checks(cell, device, check)
        # bfloat16 products: the device agrees with the CPU and with itself (autograd) to
        # bfloat16 precision.
        runs16 = (("cpu", True), (device, True), (device, False))  # (device, manual backward)
        cpu16, dev16, dev16_auto = (run(cell, d, m, bf16=True) for d, m in runs16)

        def near(a: torch.Tensor, b: torch.Tensor) -> bool:
            return bool((a - b).norm() <= 2e-2 * b.norm())

        check(f"{cell}: bf16 products, device outputs ~ CPU outputs", near(dev16[0], cpu16[0]))
        check(f"{cell}: bf16 products, device gradients ~ CPU gradients",
              all(near(a, b) for a, b in zip(dev16[2], cpu16[2])))  # fmt: skip
        check(f"{cell}: bf16 products, hand-written backward ~ autograd on the device",
              all(near(a, b) for a, b in zip(dev16[2], dev16_auto[2])))  # fmt: skip
        # Inactive RIMs keep h bit for bit, step by step (float32, acting path).
        torch.manual_seed(1)
        core = RIMs(10, num_units=6, k=2, hidden_size=8, cell=cell).to(device).eval()
        state = tuple(torch.randn_like(s) for s in core.initial_state(64))
        with torch.no_grad():
            _, new, info = core(torch.randn(1, 64, 10, device=device), state)
        idle = ~info.mask[0]  # (B, U)
        check(f"{cell}: inactive state bit-identical on the device",
              all(torch.equal(n[idle], s[idle]) for n, s in zip(new, state)))  # fmt: skip
        # Without query biases every RIM ties at the first step: the lowest indices win,
        # eagerly (a stable sort) and compiled (counted ranks).
        tied = []
        for compiled in (False, True):
            core = RIMs(10, num_units=6, k=4, hidden_size=8, cell=cell, query_bias=False,
                        compile_steps=compiled).to(device).eval()  # fmt: skip
            with torch.no_grad():
                _, _, info = core(torch.randn(1, 8, 10, device=device), core.initial_state(8))
            tied.append(info.mask[0].cpu().tolist() == [[True] * 4 + [False] * 2] * 8)
        check(f"{cell}: tied RIMs chosen by index on the device, eager and compiled", all(tied))
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
