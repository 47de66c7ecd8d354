"""Prototype: a RIMs forward step as three Triton kernels between its three matmuls.

On a GPU a compiled step (``--rims-compile``) launches 10 Inductor kernels and 3 matmuls
forward (``bench/step_kernels.py --device cuda``); each small kernel costs a few microseconds
even replayed from a CUDA graph. Here the work between the matmuls is one hand-written kernel
each, one program per batch row (a row's RIMs interact through the selection and the
communication, rows never do):

1. ``_cell_kernel``: the episode-start reset, the state products' bias, the input attention's
   score, the top-k selection by ranks, the LSTM cell and the kept state;
2. ``_attention_kernel``: the communication attention (scores, softmax over the RIMs, read);
3. ``_output_kernel``: the gated output and the residual for the active RIMs.

It computes what ``RIMs._step_body`` computes (outputs and the intermediates the hand-written
backward saves), for the configuration of issue 8's target: LSTM cells, one input element,
one input head, the gated communication output, no dropout. ``--check`` compares the two;
``--time`` times a T-step forward of each, replayed from CUDA graphs. Not used by the library:
a measurement to decide whether hand-written step kernels are worth building in.

    TRITON_INTERPRET=1 python bench/triton_step.py --device cpu --check   # Triton's interpreter
    python bench/triton_step.py --device cuda --check --time              # a GPU

``tanh`` is ``2 sigmoid(2x) - 1`` (the interpreter has no libdevice), exact to float rounding
but with the absolute, not relative, error of that rounding near 0.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # the library does not need Triton; this prototype does
    triton = tl = None

from policies import RIMs

if triton is not None:

    @triton.jit
    def _sigmoid(x):
        return 1.0 / (1.0 + tl.exp(-x))

    @triton.jit
    def _tanh(x):
        return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0

    @triton.jit
    def _gate(products, state_bias, value_gates, row, bias, vg, hh, ok, kept_row, attended,
              j: tl.constexpr, H: tl.constexpr, HAS_KEEP: tl.constexpr):  # fmt: skip
        """Gate ``j``'s pre-activation ``(UP, HP)``: the state products (0 for a reset row)
        plus their bias plus the attended input's value-gate product."""
        p = tl.load(products + row + j * H + hh[None, :], mask=ok, other=0.0)
        if HAS_KEEP:
            p = tl.where(kept_row > 0, p, 0.0)
        p += tl.load(state_bias + bias + j * H, mask=ok, other=0.0)
        return attended * tl.load(value_gates + vg + j * H, mask=ok, other=0.0) + p

    @triton.jit
    def _cell_kernel(
        products, state_bias, keep, keys, value_gates, h, c,  # inputs
        h_reset, c_reset, query, read, null, mask, acts, kept_h, kept_c,  # outputs
        vg_stride_u, vg_stride_b, B, K: tl.constexpr, HAS_KEEP: tl.constexpr,
        U: tl.constexpr, H: tl.constexpr, DK: tl.constexpr,
        UP: tl.constexpr, HP: tl.constexpr, DKP: tl.constexpr,
    ):  # fmt: skip
        """One batch row ``b`` (the program id): all U RIMs. products ``(U, B, 4H+DK)`` = the
        state before the reset @ the state weight; state_bias ``(U, 4H+DK)``; keep ``(B,)``;
        keys ``(B, DK)``; value_gates ``(U, B, 4H)`` (strided); h, c ``(U, B, H)``."""
        b = tl.program_id(0)
        GQ: tl.constexpr = 4 * H + DK
        u = tl.arange(0, UP)
        u_ok = u < U
        hh = tl.arange(0, HP)
        d = tl.arange(0, DKP)
        uh_ok = u_ok[:, None] & (hh < H)[None, :]
        ud_ok = u_ok[:, None] & (d < DK)[None, :]
        if HAS_KEEP:
            kept_row = tl.load(keep + b)
        else:
            kept_row = 1.0
        # the products of a reset row are 0 (its state is), whatever they were
        row = u[:, None] * B * GQ + b * GQ
        q = tl.load(products + row + 4 * H + d[None, :], mask=ud_ok, other=0.0)
        if HAS_KEEP:
            q = tl.where(kept_row > 0, q, 0.0)
        q = q + tl.load(state_bias + u[:, None] * GQ + 4 * H + d[None, :], mask=ud_ok, other=0.0)
        key = tl.load(keys + b * DK + d, mask=d < DK, other=0.0)
        score = tl.sum(q * key[None, :], axis=1)  # (UP,): the null element's score is 0
        attended = _sigmoid(score)
        # Selection: rank by (is NaN, -score, index); the k first are active.
        sel = -score
        mine = sel[:, None]
        other = sel[None, :]
        mine_nan = mine != mine
        other_nan = other != other
        earlier = u[None, :] < u[:, None]
        same = (other == mine) | (other_nan & mine_nan)
        before = (other_nan == mine_nan) & ((other < mine) | (same & earlier))
        before = (before | (~other_nan & mine_nan)) & u_ok[None, :]
        active = (tl.sum(before.to(tl.int32), axis=1) < K) & u_ok
        # the cell
        state = u[:, None] * B * H + b * H + hh[None, :]
        h0 = tl.load(h + state, mask=uh_ok, other=0.0) * kept_row
        c0 = tl.load(c + state, mask=uh_ok, other=0.0) * kept_row
        vg = u[:, None] * vg_stride_u + b * vg_stride_b + hh[None, :]
        bias = u[:, None] * GQ + hh[None, :]
        a = attended[:, None]
        i = _sigmoid(_gate(products, state_bias, value_gates, row, bias, vg, hh, uh_ok,
                           kept_row, a, 0, H, HAS_KEEP))  # fmt: skip
        f = _sigmoid(_gate(products, state_bias, value_gates, row, bias, vg, hh, uh_ok,
                           kept_row, a, 1, H, HAS_KEEP))  # fmt: skip
        g = _tanh(_gate(products, state_bias, value_gates, row, bias, vg, hh, uh_ok,
                        kept_row, a, 2, H, HAS_KEEP))  # fmt: skip
        o = _sigmoid(_gate(products, state_bias, value_gates, row, bias, vg, hh, uh_ok,
                           kept_row, a, 3, H, HAS_KEEP))  # fmt: skip
        c1 = f * c0 + i * g
        tanh_c = _tanh(c1)
        h1 = o * tanh_c
        on = active[:, None]
        tl.store(h_reset + state, h0, mask=uh_ok)
        tl.store(c_reset + state, c0, mask=uh_ok)
        tl.store(kept_h + state, tl.where(on, h1, h0), mask=uh_ok)
        tl.store(kept_c + state, tl.where(on, c1, c0), mask=uh_ok)
        plane = U * B * H
        tl.store(acts + state, i, mask=uh_ok)
        tl.store(acts + plane + state, f, mask=uh_ok)
        tl.store(acts + 2 * plane + state, g, mask=uh_ok)
        tl.store(acts + 3 * plane + state, o, mask=uh_ok)
        tl.store(acts + 4 * plane + state, tanh_c, mask=uh_ok)
        tl.store(query + u[:, None] * B * DK + b * DK + d[None, :], q, mask=ud_ok)
        tl.store(read + u * B + b, attended, mask=u_ok)
        tl.store(null + u * B + b, _sigmoid(score * -1.0), mask=u_ok)
        tl.store(mask + u * B + b, active.to(tl.int8), mask=u_ok)

    @triton.jit
    def _attention_kernel(
        qkv, attn, read, B, scale,
        U: tl.constexpr, CH: tl.constexpr, CDK: tl.constexpr, CDV: tl.constexpr,
        UP: tl.constexpr,
    ):  # fmt: skip
        """One batch row: qkv ``(U, B, CH*(2CDK+CDV))`` -> attn ``(U, U, B, CH)`` (softmax over
        the second U) and read ``(U, B, CH*CDV)``."""
        b = tl.program_id(0)
        W: tl.constexpr = CH * (2 * CDK + CDV)
        i = tl.arange(0, UP)
        hd = tl.arange(0, CH)
        kd = tl.arange(0, CDK)
        vd = tl.arange(0, CDV)
        row = i[:, None, None] * B * W + b * W + hd[None, :, None] * CDK  # (UP, CH, 1)
        ok_k = (i < U)[:, None, None] & (kd < CDK)[None, None, :]
        q = tl.load(qkv + row + kd[None, None, :], mask=ok_k, other=0.0)  # (UP, CH, CDK)
        k = tl.load(qkv + row + CH * CDK + kd[None, None, :], mask=ok_k, other=0.0)
        vrow = i[:, None, None] * B * W + b * W + 2 * CH * CDK + hd[None, :, None] * CDV
        ok_v = (i < U)[:, None, None] & (vd < CDV)[None, None, :]
        v = tl.load(qkv + vrow + vd[None, None, :], mask=ok_v, other=0.0)  # (UP, CH, CDV)
        # scores[i, j, h] = q_i . k_j: (UP,1,CH,CDK) * (1,UP,CH,CDK) -> sum -> (UP, UP, CH)
        s = tl.sum(q[:, None, :, :] * k[None, :, :, :], axis=3) * scale
        j_ok = (i < U)[None, :, None]
        s = tl.where(j_ok, s, float("-inf"))
        s = s - tl.max(s, axis=1)[:, None, :]
        e = tl.where(j_ok, tl.exp(s), 0.0)
        p = e / tl.sum(e, axis=1)[:, None, :]  # (UP, UP, CH)
        # read_i = sum_j p[i, j] v_j: (UP,UP,CH,1) * (1,UP,CH,CDV) -> sum over j -> (UP,CH,CDV)
        r = tl.sum(p[:, :, :, None] * v[None, :, :, :], axis=1)
        jj = tl.arange(0, UP)
        a_off = (i[:, None, None] * U * B * CH + jj[None, :, None] * B * CH + b * CH
                 + hd[None, None, :])  # fmt: skip
        a_ok = (i < U)[:, None, None] & (jj < U)[None, :, None]
        tl.store(attn + a_off, p, mask=a_ok)
        r_off = i[:, None, None] * B * CH * CDV + b * CH * CDV + hd[None, :, None] * CDV
        tl.store(read + r_off + vd[None, None, :], r, mask=ok_v)

    @triton.jit
    def _output_kernel(
        out, bias, kept_h, mask, h_out, gate, tanh_out, B,
        U: tl.constexpr, H: tl.constexpr, UP: tl.constexpr, HP: tl.constexpr,
    ):  # fmt: skip
        """One batch row: out ``(U, B, 2H)`` = read @ [output map | gate map] without the bias
        ``(U, 2H)`` -> the gated output, added to the kept state of the active RIMs."""
        b = tl.program_id(0)
        u = tl.arange(0, UP)
        hh = tl.arange(0, HP)
        ok = (u < U)[:, None] & (hh < H)[None, :]
        row = u[:, None] * B * 2 * H + b * 2 * H + hh[None, :]
        brow = u[:, None] * 2 * H + hh[None, :]
        t = _tanh(tl.load(out + row, mask=ok, other=0.0) + tl.load(bias + brow, mask=ok, other=0.0))
        gt = _sigmoid(tl.load(out + row + H, mask=ok, other=0.0)
                      + tl.load(bias + brow + H, mask=ok, other=0.0))  # fmt: skip
        state = u[:, None] * B * H + b * H + hh[None, :]
        k = tl.load(kept_h + state, mask=ok, other=0.0)
        on = tl.load(mask + u * B + b, mask=u < U, other=0)[:, None] != 0
        tl.store(h_out + state, tl.where(on, k + gt * t, k), mask=ok)
        tl.store(gate + state, gt, mask=ok)
        tl.store(tanh_out + state, t, mask=ok)


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def supported(core: RIMs) -> bool:
    """The configuration the kernels are written for."""
    sizes = (core.comm_heads, core.comm_key_size, core.comm_value_size)
    return (core.cell == "lstm" and core.input_heads == 1 and core.comm_gate
            and not core._attention_dropout_on()
            and all(n == _pow2(n) for n in sizes))  # fmt: skip


def triton_step(core: RIMs, hs: list[Tensor], t: int, inp) -> tuple[list[Tensor], Tensor, dict]:
    """Step ``t`` of ``core`` from the states ``hs`` ``(U, B, H)`` and the sequence's
    ``StepInputs``: the new states, the mask ``(U, B)`` and the intermediates
    ``RIMs._step_body`` saves for the hand-written backward."""
    h, c = hs
    U, B, H = h.shape
    dk = core.input_key_size
    ch, cdk, cdv = core.comm_heads, core.comm_key_size, core.comm_value_size
    new = h.new_empty
    products = torch.bmm(h, core.state_weight)  # (U,B,H) @ (U,H,4H+dk) -> (U,B,4H+dk)
    keys = inp.keys[t].reshape(B, dk)  # (B, 1, dk, 1) -> (B, dk)
    value_gates = inp.value_gates[:, t].view(U, B, 4 * H)  # (U,B,1,4H) -> (U,B,4H), strided
    keep = inp.keep[t] if inp.keep is not None else h  # (B,); h: an unused placeholder
    h_reset, c_reset, kept_h, kept_c = new(U, B, H), new(U, B, H), new(U, B, H), new(U, B, H)
    query, read, null = new(U, B, dk), new(U, B), new(U, B)
    mask = torch.empty(U, B, dtype=torch.int8, device=h.device)
    acts = new(5, U, B, H)  # i, f, g, o, tanh(c)
    up, hp = _pow2(U), _pow2(H)
    _cell_kernel[(B,)](
        products, inp.state_bias.reshape(U, -1), keep, keys, value_gates, h, c,
        h_reset, c_reset, query, read, null, mask, acts, kept_h, kept_c,
        value_gates.stride(0), value_gates.stride(1), B, core.k, inp.keep is not None,
        U, H, dk, up, hp, _pow2(dk),
    )  # fmt: skip
    qkv = torch.bmm(kept_h, inp.comm_weight)  # (U,B,H) -> (U,B,ch*(2cdk+cdv))
    attn = new(U, U, B, ch)
    read_c = new(U, B, ch * cdv)
    scale = inp.comm_score_scale if inp.comm_score_scale is not None else 1.0
    _attention_kernel[(B,)](qkv, attn, read_c, B, scale, U, ch, cdk, cdv, up)
    out = torch.bmm(read_c, core.comm_out)  # (U,B,ch*cdv) -> (U,B,2H), without the bias
    h_out, gate, tanh_out = new(U, B, H), new(U, B, H), new(U, B, H)
    _output_kernel[(B,)](out, core.comm_out_bias.reshape(U, -1), kept_h, mask, h_out, gate,
                         tanh_out, B, U, H, up, hp)  # fmt: skip
    mask = mask.bool()
    q, k, v = qkv.split((ch * cdk, ch * cdk, ch * cdv), dim=-1)
    intermediates = dict(
        hs=[h_reset, c_reset], query=query.view(U, B, 1, 1, dk), read=read.view(U, B, 1, 1),
        probs=None, acts=tuple(acts), mask=mask.unsqueeze(-1), kept=kept_h,
        comm=(q.reshape(U, B, ch, cdk), k.reshape(U, B, ch, cdk), v.reshape(U, B, ch, cdv),
              attn, read_c, gate, tanh_out),
    )  # fmt: skip
    return [h_out, kept_c], mask, intermediates


def reference_step(core: RIMs, hs: list[Tensor], t: int, inp) -> tuple[list[Tensor], Tensor, dict]:
    """The same step through ``RIMs._step_body``."""
    out, mask, _, _, intermediates = core._step_body(
        hs, inp.keys[t], inp.value_gates[:, t], None,
        None if inp.keep is None else inp.keep[t], inp, True,
    )  # fmt: skip
    return out, mask, intermediates


def setup(device: str, dtype: torch.dtype, T: int, B: int, seed: int = 0):
    """A benchmark core (input 512, 6 RIMs x 100, 4 active, dropout 0), its step inputs for a
    random sequence with episode starts, and random states."""
    torch.manual_seed(seed)
    core = RIMs(512, 6, 4, 100, dropout=0.0).to(device=device, dtype=dtype).train()
    x = torch.randn(T, B, 1, 512, device=device, dtype=dtype)
    starts = torch.rand(T, B, device=device) < 0.1
    with torch.no_grad():
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


def time_forward(device: str, T: int, B: int, repeats: int) -> None:
    """A T-step forward (float32, no grad, the intermediates kept as for training) by the
    Triton kernels and by the library's eager and compiled steps, each captured as one CUDA
    graph and replayed; the median of ``repeats`` replays."""
    core, inp, hs = setup(device, torch.float32, T, B)

    def library(compiled: bool):
        def step(states: list[Tensor], t: int) -> list[Tensor]:
            core.compile_steps = compiled
            return core._step(t, states, inp, [])[0]

        return step

    variants = {
        "triton kernels": lambda states, t: triton_step(core, states, t, inp)[0],
        "eager step": library(False),
        "compiled step": library(True),
    }
    for name, step in variants.items():

        def run(step=step) -> None:
            states = hs
            for t in range(T):
                states = step(states, t)

        with torch.no_grad():
            for _ in range(3):
                run()  # warm up (and compile)
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
        median_ms = sorted(times)[len(times) // 2] * 1e3
        print(f"{name:<16} forward, T={T}, B={B}: {median_ms:.2f} ms", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1")
    parser.add_argument("--check", action="store_true", help="compare with RIMs._step_body")
    parser.add_argument("--time", action="store_true", help="time T-step forwards (CUDA)")
    parser.add_argument("--T", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    if triton is None:
        print("Triton is not installed: nothing to run")
        return 2
    ok = True
    if args.check:
        for dtype in (torch.float64, torch.float32):
            for starts in (True, False):
                ok &= check(args.device, dtype, starts)
    if args.time and args.device.startswith("cuda"):
        time_forward(args.device, args.T, args.batch, repeats=20)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
