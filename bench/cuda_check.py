"""RIMs on a GPU computes what it computes on the CPU: run this on a lent GPU before timing.

For both cells, in float64 on the device: the hand-written backward gives autograd's gradients;
outputs, masks and gradients match the CPU's; exactly k RIMs are active; inactive RIMs keep their
state bit for bit; episode starts reset; with ``bf16_matmuls`` the device agrees with the CPU to
bfloat16 precision; with ``compile_steps`` (Triton kernels) it agrees with the eager steps.
Prints one line per check and exits 1 on a failure.

    python bench/cuda_check.py                  # needs CUDA; without it, says so and exits 0
    python bench/cuda_check.py --device cpu     # the script itself, against the CPU (trivial)
"""

from __future__ import annotations

import argparse
import sys

import torch

from policies.rims import RIMs


def run(
    cell: str, device: str, manual: bool, bf16: bool = False, compiled: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """float64, 4 of 6 active; or with ``bf16`` (bfloat16 products): float32, all 6 active, so
    rounding differences between devices cannot flip the selection. ``compiled``: each step
    through torch.compile (Triton kernels on a GPU)."""
    torch.manual_seed(0)
    dtype = torch.float32 if bf16 else torch.float64
    core = RIMs(10, num_units=6, k=6 if bf16 else 4, hidden_size=8, cell=cell, input_key_size=16,
                dropout=0.0, bf16_matmuls=bf16, compile_steps=compiled)  # fmt: skip
    core = core.to(device=device, dtype=dtype).train()
    core.manual_backward = manual
    x = torch.randn(9, 5, 10, dtype=dtype).to(device).requires_grad_()
    starts = torch.zeros(9, 5, dtype=torch.bool, device=device)
    starts[4, 2] = True
    state = core.initial_state(5)
    out, _, info = core(x, state, starts)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=device).view_as(out)).sum(
    ).backward()  # fmt: skip
    grads = [x.grad, *(p.grad for p in core.parameters())]
    return out.detach().cpu(), info.mask.cpu(), [g.cpu() for g in grads]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU")
    device = parser.parse_args().device
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
    for cell in ("lstm", "gru"):
        cpu = run(cell, "cpu", manual=True)
        dev_manual = run(cell, device, manual=True)
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
        # Compiled steps (--rims-compile) compute the same function as the eager ones.
        dev_compiled = run(cell, device, manual=True, compiled=True)
        same_masks = torch.equal(dev_compiled[1], dev_manual[1])
        check(f"{cell}: compiled steps, device masks == eager", same_masks)
        check(f"{cell}: compiled steps, outputs and gradients == eager (float64)",
              all(torch.allclose(a, b, rtol=1e-9, atol=1e-11)
                  for a, b in zip([dev_compiled[0], *dev_compiled[2]],
                                  [dev_manual[0], *dev_manual[2]])))  # fmt: skip
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
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
