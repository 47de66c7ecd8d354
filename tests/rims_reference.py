"""A deliberately naive RIMs step (Python loops over samples, RIMs and heads), read straight from
the paper, using the parameters of a ``policies.rims.RIMs`` module. The tests check that the
batched, restructured module computes the same function."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from policies.rims import RIMs


def _cell(
    m: RIMs, u: int, read: Tensor, h: Tensor, c: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    H = m.hidden_size
    G = (4 if m.cell == "lstm" else 3) * H
    w_hh = m.state_weight[u, :, :G]
    gx = read @ m.input_gate_weight[u] + m.input_gate_bias[u, 0]
    gh = h @ w_hh + m.hidden_gate_bias[u, 0]
    if m.cell == "lstm":
        g = gx + gh
        i, f, gg, o = (g[j * H : (j + 1) * H] for j in range(4))
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new
    r = torch.sigmoid(gx[:H] + gh[:H])
    z = torch.sigmoid(gx[H : 2 * H] + gh[H : 2 * H])
    n = torch.tanh(gx[2 * H :] + r * gh[2 * H :])
    return (1 - z) * n + z * h, None


def reference_step(
    m: RIMs, x: Tensor, h: Tensor, c: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """One step for one sample. x: ``(N, D)``; h, c: ``(U, H)``.
    Returns new h, new c, the active mask ``(U,)`` and the null attention ``(U,)``."""
    U, H = m.num_units, m.hidden_size
    G = (4 if m.cell == "lstm" else 3) * H
    heads, dk, dv = m.input_heads, m.input_key_size, m.input_value_size
    X = torch.cat([torch.zeros(1, x.shape[1], dtype=x.dtype), x])  # null element first
    K = X @ m.input_key
    V = X @ m.input_value
    null = torch.zeros(U, dtype=x.dtype)
    reads = []
    for u in range(U):
        q = h[u] @ m.state_weight[u, :, G:] + m.input_query_bias[u, 0]
        read = []
        for hh in range(heads):
            s = K[:, hh * dk : (hh + 1) * dk] @ q[hh * dk : (hh + 1) * dk] / math.sqrt(dk)
            p = torch.softmax(s, dim=0)
            null[u] += p[0] / heads
            read.append(p @ V[:, hh * dv : (hh + 1) * dv])
        reads.append(torch.cat(read))
    active = torch.zeros(U, dtype=torch.bool)
    active[torch.argsort(null)[: m.k]] = True
    h_tilde, c_tilde = h.clone(), None if c is None else c.clone()
    for u in range(U):
        if active[u]:
            hu, cu = _cell(m, u, reads[u], h[u], None if c is None else c[u])
            h_tilde[u] = hu
            if c_tilde is not None:
                c_tilde[u] = cu
    ch, ck, cv = m.comm_heads, m.comm_key_size, m.comm_value_size
    qkv = torch.stack([h_tilde[u] @ m.comm_qkv[u] for u in range(U)])  # (U, ch*(2ck+cv))
    h_new = h_tilde.clone()
    for u in range(U):
        if not active[u]:
            continue
        read = []
        for hh in range(ch):
            q = qkv[u, hh * ck : (hh + 1) * ck]
            keys = qkv[:, ch * ck + hh * ck : ch * ck + (hh + 1) * ck]
            vals = qkv[:, 2 * ch * ck + hh * cv : 2 * ch * ck + (hh + 1) * cv]
            p = torch.softmax(keys @ q / math.sqrt(ck), dim=0)
            read.append(p @ vals)
        # comm_out holds the output map, and with the gate the gate's map beside it
        w, bias = m.comm_out[u][:, :H], m.comm_out_bias[u, 0, :H]
        out = torch.cat(read) @ w + bias
        if m.comm_gate:  # the authors' gated tanh output
            w_g, b_g = m.comm_out[u][:, H:], m.comm_out_bias[u, 0, H:]
            out = torch.sigmoid(torch.cat(read) @ w_g + b_g) * torch.tanh(out)
        h_new[u] = h_tilde[u] + out
    return h_new, c_tilde, active, null


def reference_sequence(m: RIMs, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x: ``(T, B, N, D)`` from a zero state. Returns out ``(T, B, U*H)``, mask and null ``(T, B, U)``."""
    T, B = x.shape[:2]
    U, H = m.num_units, m.hidden_size
    outs = torch.zeros(T, B, U * H, dtype=x.dtype)
    masks = torch.zeros(T, B, U, dtype=torch.bool)
    nulls = torch.zeros(T, B, U, dtype=x.dtype)
    for b in range(B):
        h = torch.zeros(U, H, dtype=x.dtype)
        c = torch.zeros(U, H, dtype=x.dtype) if m.cell == "lstm" else None
        for t in range(T):
            h, c, masks[t, b], nulls[t, b] = reference_step(m, x[t, b], h, c)
            outs[t, b] = h.reshape(-1)
    return outs, masks, nulls
