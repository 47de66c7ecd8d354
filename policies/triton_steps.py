"""RIMs steps as hand-written Triton kernels (``RIMs.triton_steps``, ``--rims-triton``).

On a GPU a compiled step (``--rims-compile``) launches 13 kernels forward (Inductor's fused
elementwise kernels between three matmuls) and 12 backward; even replayed from a CUDA graph
each small kernel costs a few microseconds, and a training sequence runs hundreds of steps.
Here a step is the same three cuBLAS matmuls with one hand-written kernel after each
(``policies.triton_kernels``): six launches forward, six backward. They compute what
``RIMs._step_body`` and ``policies.rims_grad.step_backward`` compute, and save the same
intermediates, so the rest of the hand-written backward (the weight gradients over the whole
sequence) is shared.

What is covered (``policies.spec.triton_unsupported`` says why another configuration is
not): LSTM and GRU cells, one input element and head (the fused input path), the gated or the
linear communication output, no attention dropout; any sizes. Triton is not a dependency;
where it is missing, or the tensors are not on a CUDA device (``unavailable``), ``RIMs`` runs
its usual steps after one warning. On a CPU the kernels run in Triton's interpreter
(``TRITON_INTERPRET=1``), which is how the tests check them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from policies.step_grads import StepGrads

try:
    from policies import triton_kernels as kernels
except ImportError:  # no Triton: the library runs without these kernels
    kernels = None

INTERPRETER = "TRITON_INTERPRET"
"""The environment variable that has Triton build kernels for its interpreter, on CPU tensors
(read when a kernel is defined: ``triton_kernels.INTERPRETED`` says how they were built)."""

KERNEL_NAMES = ("cell_kernel", "attention_kernel", "output_kernel", "out_grad_kernel",
                "attention_grad_kernel", "cell_grad_kernel")  # fmt: skip
"""The six kernels of ``policies.triton_kernels``, in the order a step runs them."""

NUM_WARPS: dict[str, int] = dict.fromkeys(KERNEL_NAMES, 4)
"""Warps per program of each kernel: Triton's default until a GPU measures better ones
(``bench/triton_step.py --time --warps``, which sets them)."""


def fallback_message(problem: str, compiled: bool) -> str:
    """Why the kernels do not run (``problem``) and what runs instead: one line."""
    return f"{problem}; running the {'compiled' if compiled else 'eager'} steps instead"


def unavailable(device: torch.device) -> str | None:
    """Why the kernels cannot run on ``device`` in this process, or None where they can."""
    if kernels is None:
        return "Triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and kernels.INTERPRETED:
        return None
    return (f"the kernels run on CUDA devices, not {device.type} (a CPU needs {INTERPRETER}=1 "
            "before Triton is imported)")  # fmt: skip


def next_pow2(n: int) -> int:
    """The smallest power of 2 >= n: a block size."""
    return 1 << (n - 1).bit_length()


class Sizes(NamedTuple):
    """A step's cell and sizes: LSTM (else GRU); RIMs, batch, hidden and gate width (4H or 3H);
    input key size; communication heads, key and value size."""

    lstm: bool
    U: int
    B: int
    H: int
    G: int
    dk: int
    ch: int
    cdk: int
    cdv: int


def _sizes(core: Any, state: Tensor) -> Sizes:
    """``core``'s sizes for a state ``(U, B, H)``."""
    lstm = core.cell == "lstm"
    U, B, H = state.shape
    return Sizes(lstm, U, B, H, (4 if lstm else 3) * H, core.input_key_size, core.comm_heads,
                 core.comm_key_size, core.comm_value_size)  # fmt: skip


def step(
    core: Any, hs: list[Tensor], keys: Tensor, value_gates: Tensor, values: None,
    keep: Tensor | None, inp: Any, keep_intermediates: bool,
) -> tuple[list[Tensor], Tensor, Tensor, None, dict | None]:  # fmt: skip
    """``RIMs._step_body`` by the kernels, with the same arguments and results: states hs
    ``(U, B, H)`` (h and c for an LSTM, h for a GRU); this step's keys ``(B, 1, dk, 1)``,
    value_gates ``(U, B, 1, G)`` (G = 4H or 3H) and keep ``(B,)`` (or None); returns the new
    states, the mask and the null attention ``(U, B)``, None (one element) and the
    intermediates the backward needs. ``values`` is None on the fused input path, the only
    one covered."""
    h = hs[0]
    lstm, U, B, H, G, dk, ch, cdk, cdv = _sizes(core, h)
    new = h.new_empty
    up, hp = next_pow2(U), next_pow2(H)
    products = torch.bmm(h, core.state_weight)  # (U,B,H) @ (U,H,G+dk) -> (U,B,G+dk)
    keys = keys.reshape(B, dk)  # (B, 1, dk, 1) -> (B, dk)
    value_gates = value_gates.view(U, B, G)  # (U,B,1,G) -> (U,B,G), strided
    h_reset, kept_h = new(U, B, H), new(U, B, H)
    # an LSTM's c; a GRU has none, and h's buffers stand in (the kernel never touches them)
    c, c_reset, kept_c = (hs[1], new(U, B, H), new(U, B, H)) if lstm else (h, h_reset, kept_h)
    input_bias = h if lstm else inp.input_bias.reshape(U, G)  # (U,1,G) -> (U,G); GRU only
    query, read, null = new(U, B, dk), new(U, B), new(U, B)
    mask = torch.empty(U, B, dtype=torch.bool, device=h.device)
    acts = new(5 if lstm else 4, U, B, H)  # i, f, g, o, tanh(c); or r, z, n, n's hidden part
    # h stands in for an absent keep: with HAS_KEEP False the kernel never reads it
    kernels.cell_kernel[(B,)](
        products, inp.state_bias.reshape(U, -1), h if keep is None else keep, keys,
        value_gates, input_bias, h, c, h_reset, c_reset, query, read, null, mask, acts, kept_h,
        kept_c, value_gates.stride(0), value_gates.stride(1), B, core.k, keep is not None,
        lstm, U, H, G, dk, up, hp, next_pow2(dk),
        num_warps=NUM_WARPS["cell_kernel"],
    )  # fmt: skip
    qkv = torch.bmm(kept_h, inp.comm_weight)  # (U,B,H) -> (U,B,ch*(2cdk+cdv))
    attn, read_c = new(U, U, B, ch), new(U, B, ch * cdv)
    scale = 1.0 if inp.comm_score_scale is None else inp.comm_score_scale
    kernels.attention_kernel[(B,)](
        qkv, attn, read_c, B, scale, U, ch, cdk, cdv, up, next_pow2(cdk), next_pow2(cdv),
        num_warps=NUM_WARPS["attention_kernel"],
    )  # fmt: skip
    out = torch.bmm(read_c, core.comm_out)  # (U,B,ch*cdv) -> (U,B,2H or H), without the bias
    h_out = new(U, B, H)
    # the gate's and tanh's values; without the gate none (h_out stands in, never written)
    gate, tanh_out = (new(U, B, H), new(U, B, H)) if core.comm_gate else (None, None)
    kernels.output_kernel[(B,)](
        out, core.comm_out_bias.reshape(U, -1), kept_h, mask, h_out,
        h_out if gate is None else gate, h_out if tanh_out is None else tanh_out, B,
        core.comm_gate, U, H, up, hp,
        num_warps=NUM_WARPS["output_kernel"],
    )  # fmt: skip
    intermediates = None
    if keep_intermediates:
        q, k, v = qkv.split((ch * cdk, ch * cdk, ch * cdv), dim=-1)
        intermediates = dict(
            hs=[h_reset, c_reset] if lstm else [h_reset],
            query=query.view(U, B, 1, 1, dk),  # (U,B,dk) -> (U,B,heads,1,dk)
            read=read.view(U, B, 1, 1),  # (U,B) -> (U,B,heads,N)
            probs=None, acts=tuple(acts), mask=mask.unsqueeze(-1), kept=kept_h,
            # (U,B,ch*d) -> (U,B,ch,d) each, as RIMs._communicate saves them
            comm=(q.reshape(U, B, ch, cdk), k.reshape(U, B, ch, cdk), v.reshape(U, B, ch, cdv),
                  attn, read_c, gate, tanh_out),
            # for step_backward, as the kernels wrote them: no copies to join them again
            triton=True, acts_all=acts, qkv=qkv,
        )  # fmt: skip
    return ([h_out, kept_c] if lstm else [h_out]), mask, null, None, intermediates


def step_backward(
    m_: Any, inp: Any, s: dict, weights_t: tuple[Tensor, Tensor, Tensor, Tensor | None],
    one: Tensor,
    d_out: Tensor, dh: Tensor, dh_product: Tensor, dc: Tensor | None, mf: Tensor,
    read_slope: Tensor, keys: Tensor, value_gates: Tensor, keep: Tensor | None,
    keep_next: Tensor | None, d_null: Tensor | None = None,
) -> StepGrads:  # fmt: skip
    """``policies.rims_grad.step_backward`` by the kernels, with the same arguments, for a
    step that ``step`` ran (``s``, its intermediates). Like a compiled step it takes and
    returns ``dh`` without the state matmul's product ``dh_product`` ``(U, B, H)``; ``one``,
    ``mf`` and ``read_slope`` come from ``s`` here and are not read. ``dc`` is None for a
    GRU. ``d_null`` ``(U, B)``, contiguous, or None."""
    w_state_t, w_comm_t, w_out_t, _ = weights_t  # the kernels read one element: fused
    lstm, U, B, H, G, dk, ch, cdk, cdv = _sizes(m_, dh)
    new = dh.new_empty
    up, hp = next_pow2(U), next_pow2(H)
    read = s["read"].view(U, B)  # the step's input attention: (U,B,1,1) -> (U,B)
    _, _, _, attn, _, gate, tanh_out = s["comm"]  # gate and tanh_out None without the gate
    dh_total, d_o = new(U, B, H), new(U, B, 2 * H if m_.comm_gate else H)
    # dh stands in for an absent keep_next (as for keep in ``step``) and for the gate's values
    kernels.out_grad_kernel[(B,)](
        dh, dh_product, dh if keep_next is None else keep_next, d_out, s["mask"],
        dh if gate is None else gate, dh if tanh_out is None else tanh_out, dh_total, d_o, B,
        keep_next is not None, m_.comm_gate, U, H, up, hp,
        num_warps=NUM_WARPS["out_grad_kernel"],
    )  # fmt: skip
    d_read = torch.bmm(d_o, w_out_t)  # (U,B,2H or H) @ (U,2H or H,ch*cdv) -> (U,B,ch*cdv)
    d_qkv = new(U, B, ch * (2 * cdk + cdv))
    kernels.attention_grad_kernel[(B,)](
        s["qkv"], attn, d_read, d_qkv, B, U, ch, cdk, cdv, up, next_pow2(cdk), next_pow2(cdv),
        num_warps=NUM_WARPS["attention_grad_kernel"],
    )  # fmt: skip
    kept_product = torch.bmm(d_qkv, w_comm_t)  # (U,B,3-part) @ (U,3-part,H) -> (U,B,H)
    value_gates = value_gates.view(U, B, G)  # (U,B,1,G) -> (U,B,G), strided
    dh_in, d_hq, d_scores = new(U, B, H), new(U, B, G + dk), new(U, B)
    # an LSTM's c gradients, or a GRU's own input-gate gradients (dh's buffers stand in for
    # what the kernel does not touch)
    dc, dc_in, d_gx = (dc, new(U, B, H), dh) if lstm else (dh, dh, new(U, B, G))
    # keys (B,1,dk,1) -> (B,dk); dh stands in for an absent keep or d_null, as in ``step``
    kernels.cell_grad_kernel[(B,)](
        dh_total, kept_product, s["mask"], dc, s["acts_all"], s["hs"][-1], value_gates,
        read, keys.reshape(B, dk), dh if keep is None else keep,
        dh if d_null is None else d_null, dh_in, dc_in, d_hq, d_gx, d_scores,
        value_gates.stride(0), value_gates.stride(1), B, keep is not None, d_null is not None,
        lstm, U, H, G, dk, up, hp, next_pow2(dk),
        num_warps=NUM_WARPS["cell_grad_kernel"],
    )  # fmt: skip
    dh_product = torch.bmm(d_hq, w_state_t)  # (U,B,G+dk) @ (U,G+dk,H) -> (U,B,H)
    if lstm:  # the input gates' gradients are the hidden ones: d_hq's first G columns
        return StepGrads(dh_in, dh_product, dc_in, d_qkv, d_o, d_hq[..., :G],
                         d_scores.view(U, B, 1, 1), d_hq)  # fmt: skip
    # d_scores (U,B) -> (U,B,heads,N)
    return StepGrads(dh_in, dh_product, None, d_qkv, d_o, d_gx, d_scores.view(U, B, 1, 1), d_hq)
