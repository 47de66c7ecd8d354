"""A hand-written backward for the RIMs time loop (training without attention dropout).

Autograd records some 40 small nodes per RIMs step and accumulates every weight's gradient
step by step; at recurrent-PPO sizes that bookkeeping, not arithmetic, dominates. Here the
forward runs the very same ``RIMs._step`` without recording, keeping the intermediates the
backward needs, and the backward walks the steps in reverse with the chain rule written out:
the state-path gradients step by step, every weight's gradient in one batched matmul over all
steps at the end. Gradients to the precomputed inputs (keys, value-gate products or values,
biases, the scaled communication weight) flow on through autograd to the parameters and the
input.

Used only when ``RIMs._use_manual_backward`` says so (grad enabled, no dropout), on both input
paths: the fused one (value-gate products precomputed) and the one for larger sets (each step
reads the values, then multiplies by the input-to-gate weight). The tests check it against
autograd in float64 for both cells and both paths. The null attention is
differentiated too, as autograd does (``--selection-balance`` trains it). With
``RIMs.bf16_matmuls`` the sequence-wide weight products take bfloat16 operands, as the forward's
precompute does, and accumulate in the gradients' dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from policies import triton_steps
from policies.compiled import CompiledStep
from policies.rims import StepInputs
from policies.step_grads import StepGrads


def run_with_manual_backward(
    module: Any, inp: StepInputs, hs: list[Tensor]
) -> tuple[Tensor, list[Tensor], Tensor, Tensor, Tensor | None]:
    """Forward of all steps. Returns out ``(T, U, B, H)``, the final states (U-major), masks and
    null attention ``(T, U, B)`` and the element attention ``(T, U, B, N)`` (None for one
    element). The outputs, the states and the null attention are differentiable through
    ``RIMsSequence``; the masks and the element attention are not."""
    lstm = module.cell == "lstm"
    c0 = hs[1] if lstm else hs[0].new_zeros(0)
    out, c_last, masks, nulls, attention = RIMsSequence.apply(
        module, inp, inp.keys, inp.gate_values, inp.values, module.input_gate_weight,
        inp.state_bias, inp.input_bias, inp.comm_weight, module.state_weight, module.comm_out,
        module.comm_out_bias, hs[0], c0,
    )  # fmt: skip
    states = [out[-1], c_last] if lstm else [out[-1]]
    return out, states, masks, nulls, attention


class RIMsSequence(torch.autograd.Function):
    """All steps of a RIMs forward; see the module docstring."""

    @staticmethod
    def forward(ctx, module, inp, keys, gate_values, values, input_gate_weight, state_bias,
                input_bias, comm_weight, state_weight, comm_out, comm_out_bias, h0,
                c0):  # fmt: skip
        lstm = module.cell == "lstm"
        hs = [h0, c0] if lstm else [h0]
        saved: list[dict] = []
        outs, masks, nulls, attention = [], [], [], []
        body = module._step_function(h0, inp, saving=True)
        for at in inp.slices():
            hs, mask, null, element_attention = module._step(at, hs, inp, saved, body)
            outs.append(hs[0])
            masks.append(mask)
            nulls.append(null)
            attention.append(element_attention)
        ctx.module, ctx.inp, ctx.steps = module, inp, saved
        masks, nulls = torch.stack(masks), torch.stack(nulls)  # T x (U,B) -> (T,U,B)
        several = attention[0] is not None  # _step reports it for N > 1 elements only
        attention = torch.stack(attention) if several else None  # T x (U,B,N) -> (T,U,B,N)
        c_last = hs[1] if lstm else c0
        # Gradients that nothing downstream produced come as None, not zeros: without
        # --selection-balance the null attention's term then costs nothing.
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(masks, *([attention] if several else []))
        return torch.stack(outs), c_last, masks, nulls, attention  # T x (U,B,H) -> (T,U,B,H)

    @staticmethod
    def backward(ctx, d_out, d_c_last, _d_masks, d_nulls, _d_attention):
        m_, inp, steps = ctx.module, ctx.inp, ctx.steps
        lstm = m_.cell == "lstm"
        T = len(steps)
        U, B, H = steps[0]["kept"].shape
        fused = inp.value_gates is not None  # else each step read the values (a larger set)
        if d_out is None:  # only the final state (or the null attention) was used
            d_out = steps[0]["kept"].new_zeros(T, U, B, H)
        d_out = d_out.contiguous()  # (T, U, B, H); one layout for the (compiled) steps
        if d_nulls is not None:  # (T, U, B), often a transpose's gradient: the kernels' layout
            d_nulls = d_nulls.contiguous()
        G = m_.input_gate_weight.shape[-1]
        # The masks and the reads' slopes of all steps at once (small; one op each, not T).
        masks = torch.stack([s["mask"] for s in steps], dim=1)  # T x (U,B,1) -> (U,T,B,1)
        mf_all = masks.to(d_out.dtype)
        reads = torch.stack([s["read"] for s in steps], dim=1)  # T x (U,B,heads,N) -> (U,T,B,..)
        # read = sigmoid(score) for one element: its derivative, (U, T, B, 1, 1)
        read_slope = reads * (1 - reads) if inp.one_element else None
        dh = torch.zeros_like(steps[0]["kept"])
        # The steps ran as Triton kernels (RIMs.triton_steps), or not; the same for all.
        by_kernels = steps[0].get("triton", False)
        # Compiled and Triton steps hand back their state-gradient product unadded
        # (StepGrads.dh_product); zeros for the last step, so that every step compiles to one
        # signature.
        dh_product = torch.zeros_like(dh) if m_.compile_steps or by_kernels else None
        dc = dh.clone() if lstm else None
        if lstm and d_c_last is not None:
            dc = dc + d_c_last
        one = d_out.new_ones(())  # `one - x` costs half of `1 - x` (no Python scalar to wrap)
        w_state_t = m_.state_weight.transpose(1, 2)  # (U, G+Q, H)
        w_comm_t = inp.comm_weight.transpose(1, 2)  # (U, 3-part, H)
        w_out_t = m_.comm_out.transpose(1, 2)  # (U, H or 2H with the gate, ch*cdv)
        w_in_t = None if fused else m_.input_gate_weight.transpose(1, 2)  # (U, G, heads*dv)
        # Per-step factors of the weight gradients, summed in one matmul after the loop; and
        # the per-step gradients the value-gate products and the keys need, joined after it.
        h_ins, d_hqs, kepts, d_qkvs, reads_c, d_os = [], [], [], [], [], []
        d_gxs, d_scores_all, read_ins, d_read_ins = [], [], [], []
        step_back = _COMPILED_STEP_BACKWARD if m_.compile_steps else step_backward
        if by_kernels:
            step_back = triton_steps.step_backward
        weights_t = (w_state_t, w_comm_t, w_out_t, w_in_t)
        # Each step hands back dh before its own episode-start reset; the step before applies
        # it (keep_next), where it fuses into that step's first kernel. Ones after the last.
        keep_next = None if inp.keep is None else torch.ones_like(inp.keep[0])
        for t in reversed(range(T)):
            s = steps[t]
            keep = None if inp.keep is None else inp.keep[t]
            g = step_back(
                m_, inp, s, weights_t, one, d_out[t], dh, dh_product, dc, mf_all[:, t],
                None if read_slope is None else read_slope[:, t], inp.keys[t],
                inp.value_gates[:, t] if fused else inp.values[t], keep, keep_next,
                None if d_nulls is None else d_nulls[t],
            )  # fmt: skip
            dh, dh_product, dc, keep_next = g.dh, g.dh_product, g.dc, keep
            kepts.append(s["kept"])
            d_qkvs.append(g.d_qkv)
            reads_c.append(s["comm"][4])
            d_os.append(g.d_o)
            d_gxs.append(g.d_gx)  # 0 where the RIM was inactive
            d_scores_all.append(g.d_scores)  # (U, B, heads, N)
            h_ins.append(s["hs"][0])
            d_hqs.append(g.d_hq)
            if not fused:
                read_ins.append(s["read_in"])
                d_read_ins.append(g.d_read_in)

        low = m_.matmul_dtype(d_out.dtype)  # operands of the sequence-wide products

        def summed(xs: list[Tensor], ys: list[Tensor]) -> tuple[Tensor, Tensor]:
            """sum_t xs[t]^T @ ys[t] per RIM: T x (U,B,a), T x (U,B,b) -> (U, a, b); and the
            ys joined, (U, T*B, b)."""
            x = torch.cat(xs, dim=1)  # T x (U,B,a) -> (U, T*B, a)
            y = torch.cat(ys, dim=1)  # T x (U,B,b) -> (U, T*B, b)
            return torch.bmm(x.transpose(1, 2).to(low), y.to(low)).to(y.dtype), y

        d_state_weight, d_hq_all = summed(h_ins, d_hqs)
        d_state_bias = d_hq_all.sum(1, keepdim=True)  # (U, T*B, G+Q) -> (U, 1, G+Q)
        d_comm_weight, _ = summed(kepts, d_qkvs)
        d_comm_out, d_o_all = summed(reads_c, d_os)
        d_comm_out_bias = d_o_all.sum(1, keepdim=True)  # (U, T*B, H or 2H) -> (U, 1, H or 2H)
        d_gx_all = torch.stack(d_gxs[::-1], dim=1)  # T x (U,B,G) -> (U,T,B,G), in time order
        d_input_bias = None if lstm else d_gx_all.sum((1, 2)).unsqueeze(1)  # -> (U, 1, G)
        # keys[t,b,h,:,n] gets sum_u query[u,b,h,:] * d_scores[u,b,h,n], a matmul over U:
        # T x (U,B,heads,1,dk) -> (T,U,B,heads,dk) -> (T,B,heads,dk,U), and
        # T x (U,B,heads,N) -> (T,U,B,heads,N) -> (T,B,heads,U,N); -> (T,B,heads,dk,N)
        queries = torch.stack([s["query"] for s in steps]).squeeze(4).permute(0, 2, 3, 4, 1)
        d_keys = queries @ torch.stack(d_scores_all[::-1]).permute(0, 2, 3, 1, 4)
        d_gate_values = d_values = None
        if fused:
            d_gate_values, d_input_gate_weight = value_gate_grads(
                reads.view(U, T * B, *reads.shape[3:]),  # (U,T,B,heads,N) -> (U,TB,heads,N)
                d_gx_all.view(U, T * B, G),  # (U,T,B,G) -> (U,TB,G)
                inp.gate_values, m_.input_gate_weight,
                masks.view(U, T * B),  # (U,T,B,1) -> (U,TB)
                compact=m_.state_weight.device.type == "cpu",
            )  # fmt: skip
        else:  # gates_x = read_in @ W_in, read_in[u,b,h] = sum_n read[u,b,h,n] values[b,h,n]
            d_input_gate_weight, _ = summed(read_ins, d_gxs)  # (U, heads*dv, G)
            # values[t,b,h,n] gets sum_u read[u,t,b,h,n] * d_read_in[t][u,b,h], a matmul over U:
            # (U,T,B,heads,N) -> (T,B,heads,N,U), T x (U,B,heads,dv) -> (T,B,heads,U,dv)
            d_read_in = torch.stack(d_read_ins[::-1]).permute(0, 2, 3, 1, 4)
            d_values = reads.permute(1, 2, 3, 4, 0) @ d_read_in  # -> (T,B,heads,N,dv)
        d_c0 = dc if lstm else None
        if dh_product is not None:
            dh = dh + dh_product
        if keep_next is not None:  # the first step's reset
            dh = dh * keep_next.view(1, B, 1)
        return (None, None, d_keys, d_gate_values, d_values, d_input_gate_weight, d_state_bias,
                d_input_bias, d_comm_weight, d_state_weight, d_comm_out, d_comm_out_bias, dh,
                d_c0)  # fmt: skip


def step_backward(
    m_: Any, inp: StepInputs, s: dict, weights_t: tuple[Tensor, Tensor, Tensor, Tensor | None],
    one: Tensor,
    d_out: Tensor, dh: Tensor, dh_product: Tensor | None, dc: Tensor | None, mf: Tensor,
    read_slope: Tensor | None, keys: Tensor, value_gates: Tensor, keep: Tensor | None,
    keep_next: Tensor | None, d_null: Tensor | None = None,
) -> StepGrads:  # fmt: skip
    """One step of the reverse walk: from the gradients ``dh``, ``dc`` ``(U, B, H)`` reaching
    the state after the step (plus the step's output gradient ``d_out``), those reaching the
    state before it (``dh_product``, where not None, is part of ``dh``: see ``StepGrads``).
    ``s`` is the step's saved intermediates; weights_t the transposed state,
    communication and output (with the gate's beside it) weights, and input-to-gate weight
    ``(U, G, heads*dv)`` off the fused path (else None); mf ``(U, B, 1)`` the mask as floats;
    read_slope ``(U, B, 1, 1)`` (one element) or None; keys ``(B, heads, dk, N)``,
    value_gates (on the fused path ``(U, B, heads*N, G)``, else the values ``(B, heads, N,
    dv)``) and keep ``(B,)`` this step's slices; keep_next ``(B,)`` the next step's reset,
    which ``dh`` has not been through yet (the returned ``dh`` has not been through ``keep``
    either: the step before applies it, so that it fuses into that step's first kernel; ``dc``
    has); d_null ``(U, B)`` the gradient reaching the step's null attention, or None where none
    does. A pure function (compiled once for all steps with ``RIMs.compile_steps``)."""
    lstm = m_.cell == "lstm"
    U, B, _ = dh.shape
    heads, dk = m_.input_heads, m_.input_key_size
    ch, cdk, cdv = m_.comm_heads, m_.comm_key_size, m_.comm_value_size
    w_state_t, w_comm_t, w_out_t, w_in_t = weights_t
    G = m_.input_gate_weight.shape[-1]
    if dh_product is not None:
        dh = dh + dh_product
    dh = (dh if keep_next is None else dh * keep_next.view(1, B, 1)) + d_out
    # --- communication: out = kept + m * sigmoid(read_c @ W_g + b_g) * tanh(read_c @ W_o + b_o)
    # (or kept + m * (read_c @ W_o + b_o) without the gate)
    q, k, v, attn, _, gate, tanh_o = s["comm"]  # (U,B,ch,cdk) x2, (U,B,ch,cdv), (U,U,B,ch), ..
    d_comm = dh * mf  # (U, B, H)
    if gate is None:
        d_o = d_comm
    else:  # through tanh and through the sigmoid: 2 x (U,B,H) -> (U,B,2H), the output's order
        d_o = torch.cat((_tanh_grad(d_comm * gate, tanh_o),
                         _sigmoid_grad(d_comm * tanh_o, gate)), dim=-1)  # fmt: skip
    # (U,B,H or 2H) @ (U,H or 2H,ch*cdv) -> (U,B,ch*cdv) -> (U,B,ch,cdv)
    d_r = torch.bmm(d_o, w_out_t).view(U, B, ch, cdv)
    # read_i = sum_j attn[i,j] v_j, as broadcast products (see RIMs._communicate)
    d_attn = (d_r.unsqueeze(1) * v.unsqueeze(0)).sum(-1)  # (U, U, B, ch)
    d_v = (attn.unsqueeze(-1) * d_r.unsqueeze(1)).sum(0)  # (U, B, ch, cdv)
    d_s = _softmax_grad(d_attn, attn, 1).unsqueeze(-1)  # softmax over j; (U, U, B, ch, 1)
    d_q = (d_s * k.unsqueeze(0)).sum(1)  # sum over j: (U, B, ch, cdk)
    d_k = (d_s * q.unsqueeze(1)).sum(0)  # sum over i: (U, B, ch, cdk)
    # three (U,B,ch,d) -> (U,B,ch*d), joined in qkv's column order
    d_qkv = torch.cat((d_q.view(U, B, ch * cdk), d_k.view(U, B, ch * cdk),
                       d_v.view(U, B, ch * cdv)), dim=-1)  # fmt: skip
    d_kept = dh + torch.bmm(d_qkv, w_comm_t)  # (U, B, H)
    # --- selection: kept = where(m, new, old)
    d_new = d_kept * mf
    dh_in = d_kept - d_new
    # --- the cells
    dc_in = None
    if lstm:
        i, f, g, o, tanh_c = s["acts"]
        d_c_new = dc * mf
        dc_in = dc - d_c_new
        d_c_new = d_c_new + _tanh_grad(d_new * o, tanh_c)
        dc_in = torch.addcmul(dc_in, d_c_new, f)
        d_gates = torch.cat((
            _sigmoid_grad(d_c_new * g, i),
            _sigmoid_grad(d_c_new * s["hs"][1], f),
            _tanh_grad(d_c_new * i, g),
            _sigmoid_grad(d_new * tanh_c, o),
        ), dim=-1)  # fmt: skip
        d_gx = d_gh = d_gates
    else:
        r, z, n, h_n = s["acts"]
        h_in = s["hs"][0]
        d_n = _tanh_grad(d_new * (one - z), n)
        d_r_pre = _sigmoid_grad(d_n * h_n, r)
        d_z_pre = _sigmoid_grad(d_new * (h_in - n), z)
        dh_in = dh_in + d_new * z
        d_gx = torch.cat((d_r_pre, d_z_pre, d_n), dim=-1)
        d_gh = torch.cat((d_r_pre, d_z_pre, d_n * r), dim=-1)
    # --- input side: gates_x = read @ value_gates, or read_in @ W_in with read_in = read @ values
    d_read_in = None
    if w_in_t is not None:  # (U,B,G) @ (U,G,heads*dv) -> (U,B,heads*dv) -> (U,B,heads,dv)
        d_read_in = torch.bmm(d_gx, w_in_t).view(U, B, heads, -1)
        # batched over (B, heads) as the forward: (B,heads,U,dv) @ (B,heads,dv,N)
        # -> (B,heads,U,N) -> (U,B,heads,N)
        d_read = (d_read_in.permute(1, 2, 0, 3) @ value_gates.transpose(-1, -2)).permute(
            2, 0, 1, 3)  # fmt: skip
    elif inp.one_element:  # a dot product per RIM and row: (U,B,G) -> (U,B,1,1)
        d_read = (d_gx * value_gates.view(U, B, G)).sum(-1).view(U, B, 1, 1)
    else:  # (U,B,1,G) @ (U,B,G,heads*N) -> (U,B,1,heads*N) -> (U,B,heads,N)
        d_read = (d_gx.unsqueeze(2) @ value_gates.transpose(-1, -2)).view(s["read"].shape)
    if inp.one_element:
        if d_null is not None:  # null = sigmoid(-score) = 1 - read
            d_read = d_read - d_null.view(U, B, 1, 1)  # (U,B) -> (U,B,1,1)
        d_scores = d_read * read_slope  # (U, B, 1, 1)
        # products of scalars, no matmul: (U,B,1,1) x (1,B,1,dk) -> (U,B,1,dk)
        d_query = d_scores * keys.view(1, B, 1, dk)
    else:
        p = s["probs"]  # (U, B, heads, 1+N), the null first
        if d_null is None:  # the null column gets no gradient
            d_p = F.pad(d_read, (1, 0))  # (U,B,heads,N) -> (U,B,heads,1+N)
        else:  # null = the null column's mean over heads: each head's gets d_null / heads
            d_p_null = (d_null / heads).view(U, B, 1, 1).expand(U, B, heads, 1)  # (U,B)->(..,1)
            d_p = torch.cat((d_p_null, d_read), dim=-1)  # -> (U, B, heads, 1+N)
        d_scores = (p * (d_p - (d_p * p).sum(-1, keepdim=True)))[..., 1:]
        # (U,B,heads,1,N) @ (1,B,heads,N,dk) -> (U,B,heads,1,dk)
        d_query = d_scores.unsqueeze(3) @ keys.transpose(-1, -2).unsqueeze(0)
    d_hq = torch.cat((d_gh, d_query.reshape(U, B, heads * dk)), dim=-1)  # (U, B, G+Q)
    # dh_in + d_hq @ W_state^T: (U,B,G+Q) @ (U,G+Q,H) -> (U,B,H)
    dh_product = None
    if torch.compiler.is_compiling():
        # Compiled, the product is handed back unadded and the step before adds it in its first
        # kernel: the sum in the matmul (baddbmm) would first copy dh_in into the matmul's
        # output, a kernel of its own on a GPU.
        dh_product = torch.bmm(d_hq, w_state_t)
    else:  # eagerly the sum in the matmul saves the add's kernel
        dh_in = torch.baddbmm(dh_in, d_hq, w_state_t)
    # --- the episode-start reset at the top of the step (dh's is left to the step before)
    if keep is not None and lstm:
        dc_in = dc_in * keep.view(1, B, 1)
    return StepGrads(dh_in, dh_product, dc_in, d_qkv, d_o, d_gx, d_scores, d_hq, d_read_in)


def _sigmoid_grad(grad: Tensor, y: Tensor) -> Tensor:
    """``grad * y * (1 - y)``, the gradient through ``y = sigmoid(x)``: one kernel, not three."""
    return torch.ops.aten.sigmoid_backward(grad, y)


def _tanh_grad(grad: Tensor, y: Tensor) -> Tensor:
    """``grad * (1 - y * y)``, the gradient through ``y = tanh(x)``: one kernel, not three."""
    return torch.ops.aten.tanh_backward(grad, y)


def _softmax_grad(grad: Tensor, p: Tensor, dim: int) -> Tensor:
    """``p * (grad - (grad * p).sum(dim))``, the gradient through ``p = softmax(x, dim)``:
    one kernel, not four."""
    return torch.ops.aten._softmax_backward_data(grad, p, dim, p.dtype)


def value_gate_grads(
    read: Tensor, d_gx: Tensor, values: Tensor, weight: Tensor, active: Tensor, compact: bool
) -> tuple[Tensor, Tensor]:
    """Gradients of the value-gate products ``P[t,u,b,h*N+n] = values[tb,n,h] @ W[u,h]``, whose
    gradient is ``read[u,tb,h,n] * d_gx[u,tb]`` (the step reads ``sum_{h,n} read * P``).

    read ``(U, TB, heads, N)``; d_gx ``(U, TB, G)``, zero where RIM u was inactive; values
    ``(TB*N, heads, dv)``; weight ``(U, heads*dv, G)``; active ``(U, TB)`` bool. Returns the
    gradients of ``values`` and ``weight``. ``compact`` skips the inactive rows (a third of the
    arithmetic at 4 of 6 active), which needs each RIM's row count on the host: CPU only.
    """
    U, TB, heads, N = read.shape
    dv, G = values.shape[-1], d_gx.shape[-1]
    low = values.dtype  # the products' operand dtype (bfloat16 with RIMs.bf16_matmuls)
    v = values.view(TB, N, heads, dv)  # (TB*N, heads, dv) -> (TB, N, heads, dv)
    w = weight.to(low).view(U, heads, dv, G)  # (U, heads*dv, G) -> (U, heads, dv, G)
    # Both gradients accumulate (over elements, heads and RIMs) in the gradients' dtype.
    d_v = torch.zeros(v.shape, dtype=d_gx.dtype, device=v.device)
    d_w = torch.zeros(w.shape, dtype=d_gx.dtype, device=v.device)
    for u in range(U):
        rows = active[u].nonzero().squeeze(1) if compact else None  # (n_u,) active rows
        g = d_gx[u] if rows is None else d_gx[u].index_select(0, rows)  # (n_u, G)
        r = read[u] if rows is None else read[u].index_select(0, rows)  # (n_u, heads, N)
        for h in range(heads):
            for n in range(N):
                d_p = (r[:, h, n : n + 1] * g).to(low)  # (n_u, G): the products' gradient
                v_hn = v[:, n, h] if rows is None else v[:, n, h].index_select(0, rows)
                if low == d_w.dtype:
                    d_w[u, h].addmm_(v_hn.t(), d_p)  # (dv, n_u) @ (n_u, G)
                else:  # a bfloat16 product, accumulated in float32
                    d_w[u, h] += v_hn.t() @ d_p
                d_v_hn = (d_p @ w[u, h].t()).to(d_v.dtype)  # (n_u, G) @ (G, dv) -> (n_u, dv)
                if rows is None:
                    d_v[:, n, h] += d_v_hn
                else:
                    d_v[:, n, h].index_add_(0, rows, d_v_hn)
    return d_v.to(low).view_as(values), d_w.view_as(weight)


_COMPILED_STEP_BACKWARD = CompiledStep(step_backward, "RIMs backward step")
