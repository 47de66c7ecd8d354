"""The Triton kernels of a RIMs step (``--rims-triton``): three forward, three backward.

Each runs one program per batch row (a row's RIMs interact through the selection and the
communication; rows never do), between the step's cuBLAS matmuls; ``policies.triton_steps``
launches them. Forward:

1. ``cell_kernel``: the episode-start reset, the state products' bias, the input attention's
   score, the top-k selection by ranks, the LSTM or GRU cell and the kept state;
2. ``attention_kernel``: the communication attention (scores, softmax over the RIMs, read);
3. ``output_kernel``: the (gated) output and the residual for the active RIMs.

Backward: ``out_grad_kernel`` (the output), ``attention_grad_kernel`` (the
communication attention) and ``cell_grad_kernel`` (the cell, the selection's mask and the
input attention), as ``policies.rims_grad.step_backward`` computes them.

Blocks are powers of 2 (``UP``, ``HP``, ``DKP``, ``CDKP``, ``CDVP`` pad the RIMs, the hidden,
the input key and the communication key and value sizes), masked to the real sizes. ``tanh`` is
``2 sigmoid(2x) - 1`` (Triton's interpreter has no libdevice): exact to float rounding, with
the absolute, not relative, error of that rounding near 0. Importing this module needs Triton.
"""

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _hidden(products, state_bias, row, bias, hh, ok, kept_row, j: tl.constexpr,
            H: tl.constexpr, HAS_KEEP: tl.constexpr):  # fmt: skip
    """Gate ``j``'s hidden part ``(UP, HP)``: the state products (0 for a reset row) plus
    their bias."""
    p = tl.load(products + row + j * H + hh[None, :], mask=ok, other=0.0)
    if HAS_KEEP:
        p = tl.where(kept_row > 0, p, 0.0)
    return p + tl.load(state_bias + bias + j * H, mask=ok, other=0.0)


@triton.jit
def _input(value_gates, input_bias, vg, ib, ok, attended, j: tl.constexpr, H: tl.constexpr,
           LSTM: tl.constexpr):  # fmt: skip
    """Gate ``j``'s input part ``(UP, HP)``: the attended input's value-gate product, plus the
    input bias for a GRU (an LSTM's is folded into the state products' bias)."""
    x = attended * tl.load(value_gates + vg + j * H, mask=ok, other=0.0)
    if not LSTM:
        x += tl.load(input_bias + ib + j * H, mask=ok, other=0.0)
    return x


@triton.jit
def _gate(products, state_bias, value_gates, input_bias, row, bias, vg, ib, hh, ok, kept_row,
          attended, j: tl.constexpr, H: tl.constexpr, HAS_KEEP: tl.constexpr,
          LSTM: tl.constexpr):  # fmt: skip
    """Gate ``j``'s pre-activation ``(UP, HP)``: its input part plus its hidden part."""
    x = _input(value_gates, input_bias, vg, ib, ok, attended, j, H, LSTM)
    return x + _hidden(products, state_bias, row, bias, hh, ok, kept_row, j, H, HAS_KEEP)


@triton.jit
def cell_kernel(
    products, state_bias, keep, keys, value_gates, input_bias, h, c,  # inputs
    h_reset, c_reset, query, read, null, mask, acts, kept_h, kept_c,  # outputs
    vg_stride_u, vg_stride_b, B, K: tl.constexpr, HAS_KEEP: tl.constexpr,
    LSTM: tl.constexpr, U: tl.constexpr, H: tl.constexpr, G: tl.constexpr, DK: tl.constexpr,
    UP: tl.constexpr, HP: tl.constexpr, DKP: tl.constexpr,
):  # fmt: skip
    """One batch row ``b`` (the program id): all U RIMs. products ``(U, B, G+DK)`` = the
    state before the reset @ the state weight (G = 4H for an LSTM, 3H for a GRU);
    state_bias ``(U, G+DK)``; keep ``(B,)``; keys ``(B, DK)``; value_gates ``(U, B, G)``
    (strided); input_bias ``(U, G)`` (GRU only); h, c ``(U, B, H)`` (c: LSTM only). acts:
    i, f, g, o, tanh(c) for an LSTM, r, z, n and n's hidden part for a GRU, each ``(U, B, H)``.
    Without LSTM the c pointers are not read or written."""
    b = tl.program_id(0)
    GQ: tl.constexpr = G + DK
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
    q = tl.load(products + row + G + d[None, :], mask=ud_ok, other=0.0)
    if HAS_KEEP:
        q = tl.where(kept_row > 0, q, 0.0)
    q = q + tl.load(state_bias + u[:, None] * GQ + G + d[None, :], mask=ud_ok, other=0.0)
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
    vg = u[:, None] * vg_stride_u + b * vg_stride_b + hh[None, :]
    bias = u[:, None] * GQ + hh[None, :]
    ib = u[:, None] * G + hh[None, :]
    a = attended[:, None]
    on = active[:, None]
    plane = U * B * H
    if LSTM:
        c0 = tl.load(c + state, mask=uh_ok, other=0.0) * kept_row
        i = _sigmoid(_gate(products, state_bias, value_gates, input_bias, row, bias, vg, ib, hh,
                           uh_ok, kept_row, a, 0, H, HAS_KEEP, LSTM))  # fmt: skip
        f = _sigmoid(_gate(products, state_bias, value_gates, input_bias, row, bias, vg, ib, hh,
                           uh_ok, kept_row, a, 1, H, HAS_KEEP, LSTM))  # fmt: skip
        g = _tanh(_gate(products, state_bias, value_gates, input_bias, row, bias, vg, ib, hh,
                        uh_ok, kept_row, a, 2, H, HAS_KEEP, LSTM))  # fmt: skip
        o = _sigmoid(_gate(products, state_bias, value_gates, input_bias, row, bias, vg, ib, hh,
                           uh_ok, kept_row, a, 3, H, HAS_KEEP, LSTM))  # fmt: skip
        c1 = f * c0 + i * g
        tanh_c = _tanh(c1)
        h1 = o * tanh_c
        tl.store(c_reset + state, c0, mask=uh_ok)
        tl.store(kept_c + state, tl.where(on, c1, c0), mask=uh_ok)
        tl.store(acts + state, i, mask=uh_ok)
        tl.store(acts + plane + state, f, mask=uh_ok)
        tl.store(acts + 2 * plane + state, g, mask=uh_ok)
        tl.store(acts + 3 * plane + state, o, mask=uh_ok)
        tl.store(acts + 4 * plane + state, tanh_c, mask=uh_ok)
    else:  # GRU, PyTorch's gate order (r, z, n); r gates the hidden part of n only
        r = _sigmoid(_gate(products, state_bias, value_gates, input_bias, row, bias, vg, ib, hh,
                           uh_ok, kept_row, a, 0, H, HAS_KEEP, LSTM))  # fmt: skip
        z = _sigmoid(_gate(products, state_bias, value_gates, input_bias, row, bias, vg, ib, hh,
                           uh_ok, kept_row, a, 1, H, HAS_KEEP, LSTM))  # fmt: skip
        h_n = _hidden(products, state_bias, row, bias, hh, uh_ok, kept_row, 2, H, HAS_KEEP)
        n = _tanh(_input(value_gates, input_bias, vg, ib, uh_ok, a, 2, H, LSTM) + r * h_n)
        h1 = n + z * (h0 - n)
        tl.store(acts + state, r, mask=uh_ok)
        tl.store(acts + plane + state, z, mask=uh_ok)
        tl.store(acts + 2 * plane + state, n, mask=uh_ok)
        tl.store(acts + 3 * plane + state, h_n, mask=uh_ok)
    tl.store(h_reset + state, h0, mask=uh_ok)
    tl.store(kept_h + state, tl.where(on, h1, h0), mask=uh_ok)
    tl.store(query + u[:, None] * B * DK + b * DK + d[None, :], q, mask=ud_ok)
    tl.store(read + u * B + b, attended, mask=u_ok)
    tl.store(null + u * B + b, _sigmoid(score * -1.0), mask=u_ok)
    tl.store(mask + u * B + b, active, mask=u_ok)


@triton.jit
def _layout(b, h, B, U: tl.constexpr, CH: tl.constexpr, CDK: tl.constexpr,
            CDV: tl.constexpr, UP: tl.constexpr, CDKP: tl.constexpr,
            CDVP: tl.constexpr):  # fmt: skip
    """Batch row ``b``'s and head ``h``'s offsets in the communication's tensors: its
    queries (the keys follow at ``+ CH*CDK``) and values in qkv ``(U, B, CH*(2CDK+CDV))``,
    ``(UP, CDKP)`` and ``(UP, CDVP)``; its read ``(U, B, CH*CDV)``, ``(UP, CDVP)``; its
    attention ``(U, U, B, CH)``, ``(UP, UP)``; and the masks of the real RIMs in each."""
    W: tl.constexpr = CH * (2 * CDK + CDV)
    i = tl.arange(0, UP)
    kd = tl.arange(0, CDKP)
    vd = tl.arange(0, CDVP)
    q_off = i[:, None] * B * W + b * W + h * CDK + kd[None, :]
    v_off = i[:, None] * B * W + b * W + 2 * CH * CDK + h * CDV + vd[None, :]
    r_off = i[:, None] * B * CH * CDV + b * CH * CDV + h * CDV + vd[None, :]
    a_off = i[:, None] * U * B * CH + i[None, :] * B * CH + b * CH + h
    ok_k = (i < U)[:, None] & (kd < CDK)[None, :]
    ok_v = (i < U)[:, None] & (vd < CDV)[None, :]
    a_ok = (i < U)[:, None] & (i < U)[None, :]
    return q_off, v_off, r_off, a_off, ok_k, ok_v, a_ok


@triton.jit
def _head(qkv, q_off, v_off, ok_k, ok_v, K_AT: tl.constexpr):
    """One head's queries, keys (``K_AT`` after the queries) and values, from ``_layout``'s
    offsets and masks."""
    q = tl.load(qkv + q_off, mask=ok_k, other=0.0)
    k = tl.load(qkv + q_off + K_AT, mask=ok_k, other=0.0)
    v = tl.load(qkv + v_off, mask=ok_v, other=0.0)
    return q, k, v


@triton.jit
def attention_kernel(
    qkv, attn, read, B, scale,
    U: tl.constexpr, CH: tl.constexpr, CDK: tl.constexpr, CDV: tl.constexpr,
    UP: tl.constexpr, CDKP: tl.constexpr, CDVP: tl.constexpr,
):  # fmt: skip
    """One batch row: qkv ``(U, B, CH*(2CDK+CDV))`` -> attn ``(U, U, B, CH)`` (softmax over
    the second U) and read ``(U, B, CH*CDV)``, one head at a time."""
    b = tl.program_id(0)
    j_ok = (tl.arange(0, UP) < U)[None, :]
    for h in tl.static_range(CH):
        q_off, v_off, r_off, a_off, ok_k, ok_v, a_ok = _layout(
            b, h, B, U, CH, CDK, CDV, UP, CDKP, CDVP
        )
        q, k, v = _head(qkv, q_off, v_off, ok_k, ok_v, CH * CDK)  # (UP, CDKP) x2, (UP, CDVP)
        # scores[i, j] = q_i . k_j: (UP,1,CDKP) * (1,UP,CDKP) -> sum -> (UP, UP)
        sc = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale
        sc = tl.where(j_ok, sc, float("-inf"))
        sc = sc - tl.max(sc, axis=1)[:, None]
        e = tl.where(j_ok, tl.exp(sc), 0.0)
        p = e / tl.sum(e, axis=1)[:, None]
        # read_i = sum_j p[i, j] v_j: (UP,UP,1) * (1,UP,CDVP) -> sum over j -> (UP, CDVP)
        r = tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        tl.store(attn + a_off, p, mask=a_ok)
        tl.store(read + r_off, r, mask=ok_v)


@triton.jit
def output_kernel(
    out, bias, kept_h, mask, h_out, gate, tanh_out, B, GATE: tl.constexpr,
    U: tl.constexpr, H: tl.constexpr, UP: tl.constexpr, HP: tl.constexpr,
):  # fmt: skip
    """One batch row: out ``(U, B, 2H)`` = read @ [output map | gate map] without the bias
    ``(U, 2H)`` -> the gated output (GATE; else out ``(U, B, H)`` and bias ``(U, H)``, the
    linear output), added to the kept state of the active RIMs. Without GATE the gate and
    tanh_out pointers are not written."""
    W: tl.constexpr = 2 * H if GATE else H
    b = tl.program_id(0)
    u = tl.arange(0, UP)
    hh = tl.arange(0, HP)
    ok = (u < U)[:, None] & (hh < H)[None, :]
    row = u[:, None] * B * W + b * W + hh[None, :]
    brow = u[:, None] * W + hh[None, :]
    state = u[:, None] * B * H + b * H + hh[None, :]
    k = tl.load(kept_h + state, mask=ok, other=0.0)
    on = tl.load(mask + u * B + b, mask=u < U, other=0)[:, None] != 0
    linear = tl.load(out + row, mask=ok, other=0.0) + tl.load(bias + brow, mask=ok, other=0.0)
    if GATE:
        t = _tanh(linear)
        gt = _sigmoid(tl.load(out + row + H, mask=ok, other=0.0)
                      + tl.load(bias + brow + H, mask=ok, other=0.0))  # fmt: skip
        tl.store(h_out + state, tl.where(on, k + gt * t, k), mask=ok)
        tl.store(gate + state, gt, mask=ok)
        tl.store(tanh_out + state, t, mask=ok)
    else:
        tl.store(h_out + state, tl.where(on, k + linear, k), mask=ok)


@triton.jit
def out_grad_kernel(
    dh, dh_product, keep_next, d_out, mask, gate, tanh_out, dh_total, d_o, B,
    HAS_KEEP: tl.constexpr, GATE: tl.constexpr, U: tl.constexpr, H: tl.constexpr,
    UP: tl.constexpr, HP: tl.constexpr,
):  # fmt: skip
    """Backward, one batch row: the gradient reaching the state after the step, ``(dh +
    dh_product) * keep_next + d_out``, and through the active RIMs' gated output, the
    gradient of its pre-activations d_o ``(U, B, 2H)`` (tanh part | gate part); without GATE,
    of the linear output, d_o ``(U, B, H)`` (gate and tanh_out are not read)."""
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
    tl.store(dh_total + state, g, mask=ok)
    if GATE:
        gt = tl.load(gate + state, mask=ok, other=0.0)
        t = tl.load(tanh_out + state, mask=ok, other=0.0)
        row = u[:, None] * B * 2 * H + b * 2 * H + hh[None, :]
        tl.store(d_o + row, d_comm * gt * (1.0 - t * t), mask=ok)
        tl.store(d_o + row + H, d_comm * t * gt * (1.0 - gt), mask=ok)
    else:
        tl.store(d_o + state, d_comm, mask=ok)


@triton.jit
def attention_grad_kernel(
    qkv, attn, d_read, d_qkv, B,
    U: tl.constexpr, CH: tl.constexpr, CDK: tl.constexpr, CDV: tl.constexpr,
    UP: tl.constexpr, CDKP: tl.constexpr, CDVP: tl.constexpr,
):  # fmt: skip
    """Backward, one batch row: from the gradient of the communication's read ``(U, B,
    CH*CDV)``, those of its queries, keys and values, d_qkv ``(U, B, CH*(2CDK+CDV))``, one
    head at a time."""
    b = tl.program_id(0)
    for h in tl.static_range(CH):
        q_off, v_off, r_off, a_off, ok_k, ok_v, a_ok = _layout(
            b, h, B, U, CH, CDK, CDV, UP, CDKP, CDVP
        )
        q, k, v = _head(qkv, q_off, v_off, ok_k, ok_v, CH * CDK)  # (UP, CDKP) x2, (UP, CDVP)
        dr = tl.load(d_read + r_off, mask=ok_v, other=0.0)  # (UP, CDVP)
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
def cell_grad_kernel(
    dh_total, kept_product, mask, dc, acts, state_in, value_gates, read, keys, keep, d_null,
    dh_in, dc_in, d_hq, d_gx, d_scores, vg_stride_u, vg_stride_b, B,
    HAS_KEEP: tl.constexpr, HAS_NULL: tl.constexpr, LSTM: tl.constexpr, U: tl.constexpr,
    H: tl.constexpr,
    G: tl.constexpr, DK: tl.constexpr, UP: tl.constexpr, HP: tl.constexpr, DKP: tl.constexpr,
):  # fmt: skip
    """Backward, one batch row: from the gradient of the kept state (``dh_total`` plus the
    communication keys' and values' ``kept_product``) and ``dc`` (LSTM), those of the states
    before the step (``dh_in`` without the state matmul's product, which the caller's next
    matmul gives; ``dc_in`` through the reset), of the state products and the query, d_hq
    ``(U, B, G+DK)``, of the input attention's scores ``(U, B)`` and, for a GRU, of the input
    side's gates, d_gx ``(U, B, G)`` (an LSTM's are d_hq's first G columns). state_in: the
    reset c (LSTM) or h (GRU) ``(U, B, H)``. Without LSTM the c pointers are not used. With
    HAS_NULL, d_null ``(U, B)`` is the gradient reaching the null attention (1 - read)."""
    b = tl.program_id(0)
    GQ: tl.constexpr = G + DK
    u = tl.arange(0, UP)
    hh = tl.arange(0, HP)
    d = tl.arange(0, DKP)
    ok = (u < U)[:, None] & (hh < H)[None, :]
    state = u[:, None] * B * H + b * H + hh[None, :]
    d_kept = tl.load(dh_total + state, mask=ok, other=0.0) + tl.load(
        kept_product + state, mask=ok, other=0.0)  # fmt: skip
    on = tl.load(mask + u * B + b, mask=u < U, other=0)[:, None] != 0
    d_new = tl.where(on, d_kept, 0.0)
    plane = U * B * H
    vg = u[:, None] * vg_stride_u + b * vg_stride_b + hh[None, :]
    row = u[:, None] * B * GQ + b * GQ
    s0 = tl.load(state_in + state, mask=ok, other=0.0)
    if LSTM:
        g_c = tl.load(dc + state, mask=ok, other=0.0)
        d_c_new = tl.where(on, g_c, 0.0)
        i = tl.load(acts + state, mask=ok, other=0.0)
        f = tl.load(acts + plane + state, mask=ok, other=0.0)
        g = tl.load(acts + 2 * plane + state, mask=ok, other=0.0)
        o = tl.load(acts + 3 * plane + state, mask=ok, other=0.0)
        tanh_c = tl.load(acts + 4 * plane + state, mask=ok, other=0.0)
        d_c_new += d_new * o * (1.0 - tanh_c * tanh_c)
        c_in = g_c - tl.where(on, g_c, 0.0) + d_c_new * f
        d_0 = d_c_new * g * i * (1.0 - i)
        d_1 = d_c_new * s0 * f * (1.0 - f)
        d_2 = d_c_new * i * (1.0 - g * g)
        d_3 = d_new * tanh_c * o * (1.0 - o)
        # the input side: gates_x = read * value_gates, read = sigmoid(score)
        d_read = tl.sum(d_3 * tl.load(value_gates + vg + 3 * H, mask=ok, other=0.0), axis=1)
        tl.store(d_hq + row + 2 * H + hh[None, :], d_2, mask=ok)
        tl.store(d_hq + row + 3 * H + hh[None, :], d_3, mask=ok)
        if HAS_KEEP:
            c_in = c_in * tl.load(keep + b)
        tl.store(dc_in + state, c_in, mask=ok)
        tl.store(dh_in + state, d_kept - d_new, mask=ok)
    else:  # GRU: h1 = n + z (h0 - n), n = tanh(x_n + r h_n)
        r = tl.load(acts + state, mask=ok, other=0.0)
        z = tl.load(acts + plane + state, mask=ok, other=0.0)
        n = tl.load(acts + 2 * plane + state, mask=ok, other=0.0)
        h_n = tl.load(acts + 3 * plane + state, mask=ok, other=0.0)
        d_2 = d_new * (1.0 - z) * (1.0 - n * n)  # n's pre-activation
        d_0 = d_2 * h_n * r * (1.0 - r)
        d_1 = d_new * (s0 - n) * z * (1.0 - z)
        d_read = tl.zeros((UP,), dtype=d_new.dtype)
        gx = u[:, None] * B * G + b * G + hh[None, :]
        tl.store(d_gx + gx, d_0, mask=ok)
        tl.store(d_gx + gx + H, d_1, mask=ok)
        tl.store(d_gx + gx + 2 * H, d_2, mask=ok)
        tl.store(d_hq + row + 2 * H + hh[None, :], d_2 * r, mask=ok)  # r gates h_n
        tl.store(dh_in + state, d_kept - d_new + d_new * z, mask=ok)
    d_read += tl.sum(d_0 * tl.load(value_gates + vg, mask=ok, other=0.0), axis=1)
    d_read += tl.sum(d_1 * tl.load(value_gates + vg + H, mask=ok, other=0.0), axis=1)
    d_read += tl.sum(d_2 * tl.load(value_gates + vg + 2 * H, mask=ok, other=0.0), axis=1)
    tl.store(d_hq + row + hh[None, :], d_0, mask=ok)
    tl.store(d_hq + row + H + hh[None, :], d_1, mask=ok)
    if HAS_NULL:  # null = 1 - read: its gradient reaches the read with the opposite sign
        d_read -= tl.load(d_null + u * B + b, mask=u < U, other=0.0)
    rd = tl.load(read + u * B + b, mask=u < U, other=0.0)
    d_score = d_read * rd * (1.0 - rd)  # (UP,)
    key = tl.load(keys + b * DK + d, mask=d < DK, other=0.0)
    ud_ok = (u < U)[:, None] & (d < DK)[None, :]
    tl.store(d_hq + row + G + d[None, :], d_score[:, None] * key[None, :], mask=ud_ok)
    tl.store(d_scores + u * B + b, d_score, mask=u < U)


def _built_for_the_interpreter() -> bool:
    """Whether Triton built these kernels for its interpreter (``TRITON_INTERPRET=1`` when this
    module was imported), which runs them on CPU tensors and no GPU."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(cell_kernel, InterpretedFunction)


INTERPRETED = _built_for_the_interpreter()
"""The kernels run in Triton's interpreter, on CPU tensors (else they compile for a GPU)."""
