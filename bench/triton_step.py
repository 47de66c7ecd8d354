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
one input head, the gated communication output, no dropout. The backward does what
``policies.rims_grad.step_backward`` does, in three kernels as well. ``--check`` compares
both with the library's steps; ``--time`` times T steps forward and T backward of each,
replayed from CUDA graphs. Not used by the library: a measurement to decide whether
hand-written step kernels are worth building in.

    TRITON_INTERPRET=1 python bench/triton_step.py --device cpu --check   # Triton's interpreter
    TRITON_INTERPRET=1 python bench/triton_step.py --device cpu --time --T 3 --batch 4  # runs
    python bench/triton_step.py --device cuda --profile   # each kernel's time
    python bench/triton_step.py --device cuda --check --time              # a GPU

``tanh`` is ``2 sigmoid(2x) - 1`` (the interpreter has no libdevice), exact to float rounding
but with the absolute, not relative, error of that rounding near 0.
"""

from __future__ import annotations

import argparse
import os
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
from policies.rims_grad import _COMPILED_STEP_BACKWARD, StepGrads, step_backward

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
    def _layout(b, h, B, U: tl.constexpr, CH: tl.constexpr, CDK: tl.constexpr,
                CDV: tl.constexpr, UP: tl.constexpr):  # fmt: skip
        """Batch row ``b``'s and head ``h``'s offsets in the communication's tensors: its
        queries (the keys follow at ``+ CH*CDK``) and values in qkv ``(U, B, CH*(2CDK+CDV))``,
        ``(UP, CDK)`` and ``(UP, CDV)``; its read ``(U, B, CH*CDV)``, ``(UP, CDV)``; its
        attention ``(U, U, B, CH)``, ``(UP, UP)``; and the masks of the real RIMs in each."""
        W: tl.constexpr = CH * (2 * CDK + CDV)
        i = tl.arange(0, UP)
        kd = tl.arange(0, CDK)
        vd = tl.arange(0, CDV)
        q_off = i[:, None] * B * W + b * W + h * CDK + kd[None, :]
        v_off = i[:, None] * B * W + b * W + 2 * CH * CDK + h * CDV + vd[None, :]
        r_off = i[:, None] * B * CH * CDV + b * CH * CDV + h * CDV + vd[None, :]
        a_off = i[:, None] * U * B * CH + i[None, :] * B * CH + b * CH + h
        ok_k = (i < U)[:, None] & (kd < CDK)[None, :]
        ok_v = (i < U)[:, None] & (vd < CDV)[None, :]
        a_ok = (i < U)[:, None] & (i < U)[None, :]
        return q_off, v_off, r_off, a_off, ok_k, ok_v, a_ok

    @triton.jit
    def _attention_kernel(
        qkv, attn, read, B, scale,
        U: tl.constexpr, CH: tl.constexpr, CDK: tl.constexpr, CDV: tl.constexpr,
        UP: tl.constexpr,
    ):  # fmt: skip
        """One batch row: qkv ``(U, B, CH*(2CDK+CDV))`` -> attn ``(U, U, B, CH)`` (softmax over
        the second U) and read ``(U, B, CH*CDV)``, one head at a time."""
        b = tl.program_id(0)
        j_ok = (tl.arange(0, UP) < U)[None, :]
        for h in tl.static_range(CH):
            q_off, v_off, r_off, a_off, ok_k, ok_v, a_ok = _layout(b, h, B, U, CH, CDK, CDV, UP)
            q = tl.load(qkv + q_off, mask=ok_k, other=0.0)  # (UP, CDK)
            k = tl.load(qkv + q_off + CH * CDK, mask=ok_k, other=0.0)
            v = tl.load(qkv + v_off, mask=ok_v, other=0.0)  # (UP, CDV)
            # scores[i, j] = q_i . k_j: (UP,1,CDK) * (1,UP,CDK) -> sum -> (UP, UP)
            sc = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale
            sc = tl.where(j_ok, sc, float("-inf"))
            sc = sc - tl.max(sc, axis=1)[:, None]
            e = tl.where(j_ok, tl.exp(sc), 0.0)
            p = e / tl.sum(e, axis=1)[:, None]
            # read_i = sum_j p[i, j] v_j: (UP,UP,1) * (1,UP,CDV) -> sum over j -> (UP, CDV)
            r = tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            tl.store(attn + a_off, p, mask=a_ok)
            tl.store(read + r_off, r, mask=ok_v)

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


if triton is not None:

    @triton.jit
    def _out_grad_kernel(
        dh, dh_product, keep_next, d_out, mask, gate, tanh_out, dh_total, d_o, B,
        HAS_KEEP: tl.constexpr, U: tl.constexpr, H: tl.constexpr, UP: tl.constexpr,
        HP: tl.constexpr,
    ):  # fmt: skip
        """Backward, one batch row: the gradient reaching the state after the step, ``(dh +
        dh_product) * keep_next + d_out``, and through the active RIMs' gated output, the
        gradient of its pre-activations d_o ``(U, B, 2H)`` (tanh part | gate part)."""
        b = tl.program_id(0)
        u = tl.arange(0, UP)
        hh = tl.arange(0, HP)
        ok = (u < U)[:, None] & (hh < H)[None, :]
        state = u[:, None] * B * H + b * H + hh[None, :]
        g = tl.load(dh + state, mask=ok, other=0.0) + tl.load(dh_product + state, mask=ok,
                                                               other=0.0)  # fmt: skip
        if HAS_KEEP:
            g = g * tl.load(keep_next + b)
        g += tl.load(d_out + state, mask=ok, other=0.0)
        on = tl.load(mask + u * B + b, mask=u < U, other=0)[:, None] != 0
        d_comm = tl.where(on, g, 0.0)
        gt = tl.load(gate + state, mask=ok, other=0.0)
        t = tl.load(tanh_out + state, mask=ok, other=0.0)
        row = u[:, None] * B * 2 * H + b * 2 * H + hh[None, :]
        tl.store(dh_total + state, g, mask=ok)
        tl.store(d_o + row, d_comm * gt * (1.0 - t * t), mask=ok)
        tl.store(d_o + row + H, d_comm * t * gt * (1.0 - gt), mask=ok)

    @triton.jit
    def _attention_grad_kernel(
        qkv, attn, d_read, d_qkv, B,
        U: tl.constexpr, CH: tl.constexpr, CDK: tl.constexpr, CDV: tl.constexpr,
        UP: tl.constexpr,
    ):  # fmt: skip
        """Backward, one batch row: from the gradient of the communication's read ``(U, B,
        CH*CDV)``, those of its queries, keys and values, d_qkv ``(U, B, CH*(2CDK+CDV))``, one
        head at a time."""
        b = tl.program_id(0)
        for h in tl.static_range(CH):
            q_off, v_off, r_off, a_off, ok_k, ok_v, a_ok = _layout(b, h, B, U, CH, CDK, CDV, UP)
            q = tl.load(qkv + q_off, mask=ok_k, other=0.0)  # (UP, CDK)
            k = tl.load(qkv + q_off + CH * CDK, mask=ok_k, other=0.0)
            v = tl.load(qkv + v_off, mask=ok_v, other=0.0)  # (UP, CDV)
            dr = tl.load(d_read + r_off, mask=ok_v, other=0.0)  # (UP, CDV)
            p = tl.load(attn + a_off, mask=a_ok, other=0.0)  # (UP, UP)
            # d_attn[i, j] = d_read_i . v_j; d_v_j = sum_i p[i, j] d_read_i
            d_p = tl.sum(dr[:, None, :] * v[None, :, :], axis=2)
            d_v = tl.sum(p[:, :, None] * dr[:, None, :], axis=0)
            d_s = p * (d_p - tl.sum(d_p * p, axis=1)[:, None])  # through the softmax over j
            d_q = tl.sum(d_s[:, :, None] * k[None, :, :], axis=1)
            d_k = tl.sum(d_s[:, :, None] * q[:, None, :], axis=0)
            tl.store(d_qkv + q_off, d_q, mask=ok_k)
            tl.store(d_qkv + q_off + CH * CDK, d_k, mask=ok_k)
            tl.store(d_qkv + v_off, d_v, mask=ok_v)

    @triton.jit
    def _cell_grad_kernel(
        dh_total, kept_product, mask, dc, acts, c_reset, value_gates, read, keys, keep,
        dh_in, dc_in, d_hq, d_scores, vg_stride_u, vg_stride_b, B,
        HAS_KEEP: tl.constexpr, U: tl.constexpr, H: tl.constexpr, DK: tl.constexpr,
        UP: tl.constexpr, HP: tl.constexpr, DKP: tl.constexpr,
    ):  # fmt: skip
        """Backward, one batch row: from the gradient of the kept state (``dh_total`` plus the
        communication keys' and values' ``kept_product``) and ``dc``, those of the states
        before the step (``dh_in`` without the state matmul's product, which the caller's
        next matmul gives; ``dc_in`` through the reset) and of the state products and the
        query, d_hq ``(U, B, 4H+DK)``, and of the input attention's scores ``(U, B)``."""
        b = tl.program_id(0)
        GQ: tl.constexpr = 4 * H + DK
        u = tl.arange(0, UP)
        hh = tl.arange(0, HP)
        d = tl.arange(0, DKP)
        ok = (u < U)[:, None] & (hh < H)[None, :]
        state = u[:, None] * B * H + b * H + hh[None, :]
        d_kept = tl.load(dh_total + state, mask=ok, other=0.0) + tl.load(
            kept_product + state, mask=ok, other=0.0)  # fmt: skip
        on = tl.load(mask + u * B + b, mask=u < U, other=0)[:, None] != 0
        d_new = tl.where(on, d_kept, 0.0)
        g_c = tl.load(dc + state, mask=ok, other=0.0)
        d_c_new = tl.where(on, g_c, 0.0)
        plane = U * B * H
        i = tl.load(acts + state, mask=ok, other=0.0)
        f = tl.load(acts + plane + state, mask=ok, other=0.0)
        g = tl.load(acts + 2 * plane + state, mask=ok, other=0.0)
        o = tl.load(acts + 3 * plane + state, mask=ok, other=0.0)
        tanh_c = tl.load(acts + 4 * plane + state, mask=ok, other=0.0)
        c0 = tl.load(c_reset + state, mask=ok, other=0.0)
        d_c_new += d_new * o * (1.0 - tanh_c * tanh_c)
        c_in = g_c - tl.where(on, g_c, 0.0) + d_c_new * f
        d_i = d_c_new * g * i * (1.0 - i)
        d_f = d_c_new * c0 * f * (1.0 - f)
        d_g = d_c_new * i * (1.0 - g * g)
        d_o = d_new * tanh_c * o * (1.0 - o)
        # the input side: gates_x = read * value_gates, read = sigmoid(score)
        vg = u[:, None] * vg_stride_u + b * vg_stride_b + hh[None, :]
        d_read = tl.sum(d_i * tl.load(value_gates + vg, mask=ok, other=0.0), axis=1)
        d_read += tl.sum(d_f * tl.load(value_gates + vg + H, mask=ok, other=0.0), axis=1)
        d_read += tl.sum(d_g * tl.load(value_gates + vg + 2 * H, mask=ok, other=0.0), axis=1)
        d_read += tl.sum(d_o * tl.load(value_gates + vg + 3 * H, mask=ok, other=0.0), axis=1)
        r = tl.load(read + u * B + b, mask=u < U, other=0.0)
        d_score = d_read * r * (1.0 - r)  # (UP,)
        key = tl.load(keys + b * DK + d, mask=d < DK, other=0.0)
        row = u[:, None] * B * GQ + b * GQ
        tl.store(d_hq + row + hh[None, :], d_i, mask=ok)
        tl.store(d_hq + row + H + hh[None, :], d_f, mask=ok)
        tl.store(d_hq + row + 2 * H + hh[None, :], d_g, mask=ok)
        tl.store(d_hq + row + 3 * H + hh[None, :], d_o, mask=ok)
        ud_ok = (u < U)[:, None] & (d < DK)[None, :]
        tl.store(d_hq + row + 4 * H + d[None, :], d_score[:, None] * key[None, :], mask=ud_ok)
        tl.store(d_scores + u * B + b, d_score, mask=u < U)
        if HAS_KEEP:
            c_in = c_in * tl.load(keep + b)
        tl.store(dh_in + state, d_kept - d_new, mask=ok)
        tl.store(dc_in + state, c_in, mask=ok)


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
    mask_i8, mask = mask, mask.bool()
    q, k, v = qkv.split((ch * cdk, ch * cdk, ch * cdv), dim=-1)
    intermediates = dict(
        hs=[h_reset, c_reset], query=query.view(U, B, 1, 1, dk), read=read.view(U, B, 1, 1),
        probs=None, acts=tuple(acts), mask=mask.unsqueeze(-1), kept=kept_h,
        comm=(q.reshape(U, B, ch, cdk), k.reshape(U, B, ch, cdk), v.reshape(U, B, ch, cdv),
              attn, read_c, gate, tanh_out),
        # for triton_step_backward, as they came: no copies to join them again
        acts_all=acts, qkv=qkv, mask_i8=mask_i8,
    )  # fmt: skip
    return [h_out, kept_c], mask, intermediates


def reference_step(core: RIMs, hs: list[Tensor], t: int, inp) -> tuple[list[Tensor], Tensor, dict]:
    """The same step through ``RIMs._step_body``."""
    out, mask, _, _, intermediates = core._step_body(
        hs, inp.keys[t], inp.value_gates[:, t], None,
        None if inp.keep is None else inp.keep[t], inp, True,
    )  # fmt: skip
    return out, mask, intermediates


def triton_step_backward(
    core: RIMs, inp, s: dict, weights_t: tuple[Tensor, Tensor, Tensor], d_out: Tensor,
    dh: Tensor, dh_product: Tensor, dc: Tensor, t: int,
) -> StepGrads:  # fmt: skip
    """The hand-written backward of step ``t`` (``policies.rims_grad.step_backward``) as three
    Triton kernels between its three matmuls. ``dh`` comes without ``dh_product`` (the state
    matmul's product of the step after) and before the next step's reset. Returns ``dh`` the
    same way, with its product beside it."""
    w_state_t, w_comm_t, w_out_t = weights_t
    U, B, H = dh.shape
    dk = core.input_key_size
    ch, cdk, cdv = core.comm_heads, core.comm_key_size, core.comm_value_size
    new = dh.new_empty
    up, hp = _pow2(U), _pow2(H)
    mask = s["mask_i8"] if "mask_i8" in s else s["mask"].view(U, B).to(torch.int8)
    read = s["read"].view(U, B)  # the step's input attention: (U,B,1,1) -> (U,B)
    q, k, v, attn, _, gate, tanh_out = s["comm"]
    has_next = inp.keep is not None and t + 1 < len(inp.keep)
    keep_next = inp.keep[t + 1] if has_next else dh
    dh_total, d_o = new(U, B, H), new(U, B, 2 * H)
    _out_grad_kernel[(B,)](dh, dh_product, keep_next, d_out, mask, gate, tanh_out, dh_total,
                           d_o, B, has_next, U, H, up, hp)  # fmt: skip
    d_read = torch.bmm(d_o, w_out_t)  # (U,B,2H) @ (U,2H,ch*cdv) -> (U,B,ch*cdv)
    d_qkv = new(U, B, ch * (2 * cdk + cdv))
    qkv = s.get("qkv")
    if qkv is None:  # (U,B,ch,d) x3 -> (U,B,ch*(2cdk+cdv))
        qkv = torch.cat((q.reshape(U, B, -1), k.reshape(U, B, -1), v.reshape(U, B, -1)), -1)
    acts = s.get("acts_all")
    if acts is None:
        acts = torch.stack(s["acts"])  # 5 x (U,B,H) -> (5,U,B,H)
    _attention_grad_kernel[(B,)](qkv, attn, d_read, d_qkv, B, U, ch, cdk, cdv, up)
    kept_product = torch.bmm(d_qkv, w_comm_t)  # (U,B,3-part) @ (U,3-part,H) -> (U,B,H)
    value_gates = inp.value_gates[:, t].view(U, B, 4 * H)  # (U,B,1,4H) -> (U,B,4H), strided
    keep = inp.keep[t] if inp.keep is not None else dh
    dh_in, dc_in, d_hq, d_scores = new(U, B, H), new(U, B, H), new(U, B, 4 * H + dk), new(U, B)
    _cell_grad_kernel[(B,)](
        dh_total, kept_product, mask, dc, acts, s["hs"][1], value_gates,
        read, inp.keys[t].reshape(B, dk), keep, dh_in, dc_in, d_hq, d_scores,
        value_gates.stride(0), value_gates.stride(1), B, inp.keep is not None,
        U, H, dk, up, hp, _pow2(dk),
    )  # fmt: skip
    dh_product = torch.bmm(d_hq, w_state_t)  # (U,B,4H+dk) @ (U,4H+dk,H) -> (U,B,H)
    return StepGrads(dh_in, dh_product, dc_in, d_qkv, d_o, d_hq[..., : 4 * H],
                     d_scores.view(U, B, 1, 1), d_hq)  # fmt: skip


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


def weights_t(core: RIMs, inp) -> tuple[Tensor, Tensor, Tensor]:
    """The transposed state, communication and output weights, as the backward takes them."""
    return (core.state_weight.transpose(1, 2), inp.comm_weight.transpose(1, 2),
            core.comm_out.transpose(1, 2))  # fmt: skip


def check_backward(device: str, dtype: torch.dtype, starts: bool, T: int = 4, B: int = 5) -> bool:
    """Each backward step both ways (``step_backward`` eagerly) from the same saved forward and
    the same incoming gradients; compare what each hands on. Returns whether all agree."""
    core, inp, hs = setup(device, dtype, T, B, training=True)
    if not starts:
        inp.keep = None
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    weights = weights_t(core, inp)
    ok = True
    with torch.no_grad():
        steps, states = [], hs
        for t in range(T):
            states, _, saved = reference_step(core, states, t, inp)
            steps.append(saved)
        d_out = torch.randn(T, *hs[0].shape, device=device, dtype=dtype)
        dh, dc = torch.randn_like(hs[0]), torch.randn_like(hs[1])
        for t in reversed(range(T)):
            s = steps[t]
            read = s["read"].view(dh.shape[:2])  # (U,B,1,1) -> (U,B)
            keep, keep_next = None, None
            if starts:
                keep = inp.keep[t]
                keep_next = inp.keep[t + 1] if t + 1 < T else torch.ones_like(keep)
            ref = step_backward(
                core, inp, s, weights, d_out.new_ones(()), d_out[t], dh, None, dc,
                s["mask"].to(dtype), (read * (1 - read)).view(*read.shape, 1, 1),
                inp.keys[t], inp.value_gates[:, t], keep, keep_next,
            )  # fmt: skip
            got = triton_step_backward(core, inp, s, weights, d_out[t], dh,
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

        ms = replay_ms(run, repeats, device)
        print(f"{name:<16} forward, T={T}, B={B}: {ms:.2f} ms", flush=True)


def time_backward(device: str, T: int, B: int, repeats: int) -> None:
    """The T backward steps of a training call (float32), by the Triton kernels (after the
    Triton forward) and by the library's eager and compiled steps (after its forward), each
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

    loops = {"triton kernels": triton_loop, "eager step": library_loop(False),
             "compiled step": library_loop(True)}  # fmt: skip
    for name, loop in loops.items():
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1")
    parser.add_argument("--check", action="store_true", help="compare with RIMs._step_body")
    parser.add_argument("--time", action="store_true",
                        help="time T steps each way (a CPU: run them once)")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="a profiler table of T steps each way, kernel by kernel")  # fmt: skip
    parser.add_argument("--T", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    if triton is None:
        print("Triton is not installed: nothing to run")
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or --device cpu with TRITON_INTERPRET=1")
        return 2
    if not args.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        print(f"--device {args.device} needs Triton's interpreter: set TRITON_INTERPRET=1")
        return 2
    ok = True
    if args.check:
        for dtype in (torch.float64, torch.float32):
            for starts in (True, False):
                ok &= check(args.device, dtype, starts)
                ok &= check_backward(args.device, dtype, starts)
    if args.time:
        time_forward(args.device, args.T, args.batch, repeats=20)
        time_backward(args.device, args.T, args.batch, repeats=20)
    if args.profile:
        print(profile(args.device, args.T, args.batch))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
