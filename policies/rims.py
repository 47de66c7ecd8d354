"""Recurrent Independent Mechanisms (Goyal et al., 2019, arXiv 1909.10893, v6).

``num_units`` small recurrent cells (the RIMs) share one hidden vector, split in blocks. At each
step:

1. **Input attention.** A null element (a row of zeros) is prepended to the set of input
   elements. Keys and values are shared, bias-free projections of the elements, so the null
   element's key and value are exactly zero (its score is exactly 0). Each RIM computes its own
   query from its own state with its own weights. Multi-head; probabilities are averaged over
   heads for the selection.
2. **Selection.** The ``k`` RIMs that put the *least* attention on the null element are active.
   The selection is a hard top-k and is not differentiated through; ties go to the lower index,
   the same on every device.
3. **Independent dynamics.** Each RIM runs its own LSTM or GRU cell (own weights) on what it read.
   Inactive RIMs keep ``h`` (and ``c``) bit-for-bit; their new state is the kept state, so an
   inactive RIM's output does not depend on the current input while gradient still flows,
   unchanged, through its kept state.
4. **Communication.** Active RIMs query all RIMs (per-RIM query/key/value weights, multi-head,
   softmax); the result, mapped back to the RIM's size through a gated tanh, is added residually
   to the active RIMs only.
5. **Output.** The concatenation of all RIM states, ``(T, B, num_units * hidden_size)``.

Defaults follow the paper's Table 3 (input key 64, input value 4 x hidden, one input head as in
the text, communication 4 heads with key/value 32, dropout 0.1 on both attentions). Where the
paper and the authors' code differ we follow the paper and say so:

* Communication reads the states *after* the independent step, where inactive RIMs hold their
  kept state (paper, eq. 3); the authors' code lets inactive RIMs' keys/values come from a cell
  update on null input that is then discarded.
* The communication output is per-RIM, ``sigmoid(read W_g + b_g) * tanh(read W_o + b_o)``, added
  residually: the authors' gated tanh output (the paper's equation has no output map and needs
  value size == hidden size). The bound matters: with a linear output (``comm_gate=False``, the
  popular reimplementation's) each active step adds a linear function of the other RIMs' states,
  kept states included, so the states can grow geometrically over a long episode.
* Selection uses the head-averaged probability on the null element (paper); the authors' sequence
  code uses the raw score of the real input, equivalent only for one head and one element. The
  RIMs are ranked by that probability's logit, computed from the scores: the same order, but
  without the ties that float32 rounding makes where the probability saturates at 1 (a score
  below -17 in the sigmoid), which would hand the choice among such RIMs to their index.

One deliberate deviation, on by default and switchable: ``query_bias=True`` gives each RIM's
query projection a bias. With the zero initial state the paper's bias-free queries are all zero
at every episode start, so every RIM ties and the selection at t=0 falls to index order; with a
bias the first step's selection is learned and depends on the input. The null element's score
stays exactly 0 either way (the null key is 0).

All RIMs run together with batched matmuls over a leading RIM dimension; there is no Python loop
over RIMs and no host-device synchronisation inside the time loop. Everything that does not
depend on the recurrent state (the input keys, values, and, for small input sets, the products of
the values with every RIM's input-to-gate weights) is computed for the whole sequence before the
time loop in a few large matmuls. Internally the state is kept RIM-major ``(U, B, H)``; the public
state is batch-major ``(B, U, H)`` like every other core.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies import triton_steps
from policies.compiled import CompiledStep
from policies.core import (
    CoreInfo,
    State,
    check_episode_starts,
    check_positive,
    check_sequence_input,
    keep_factor,
)
from policies.graphs import SequenceGraphs
from policies.spec import CELLS, triton_unsupported


@dataclass
class StepInputs:
    """What every step of one ``forward`` call shares (computed once, before the time loop)."""

    keys: Tensor  # (T, B, heads, dk, N), scaled by 1/sqrt(dk)
    value_gates: Tensor | None  # (U, T, B, heads*N, G) on the fused path, else None
    # (T*B*N, heads, dv): the values behind value_gates (in the matmul dtype) when the
    # hand-written backward differentiates the products itself (then value_gates carries no
    # graph), else None
    gate_values: Tensor | None
    values: Tensor | None  # (T, B, heads, N, dv) off the fused path, else None
    state_bias: Tensor  # (U, 1, G + heads*dk): hidden-gate (+ LSTM input) bias | query bias
    input_bias: Tensor | None  # (U, 1, G) GRU input-gate bias (folded into state_bias for LSTM)
    comm_weight: Tensor  # (U, H, heads*(2dk+dv)); query columns scaled by 1/sqrt(dk) unless
    comm_score_scale: float | None  # ... this is set: then each step scales its scores instead
    keep: Tensor | None  # (T, B) 0.0 where the state resets before step t
    one_element: bool
    dropout: bool

    def slices(self) -> list[StepSlices]:
        """Each step's slices of the sequence-wide tensors, cut with one ``unbind`` per tensor.
        Indexing them step by step computes the same forward, but under autograd each index's
        backward writes its step's gradient into zeros the size of the whole sequence: T such
        tensors, which dominated training time on a set of 49 inputs (``--rims-spatial``)."""
        T = self.keys.shape[0]
        none = (None,) * T
        return [
            StepSlices(*parts)
            for parts in zip(
                self.keys.unbind(0),  # (T,B,heads,dk,N) -> T x (B,heads,dk,N)
                none if self.value_gates is None else self.value_gates.unbind(1),  # (U,B,hN,G)
                none if self.values is None else self.values.unbind(0),  # T x (B,heads,N,dv)
                none if self.keep is None else self.keep.unbind(0),  # (T,B) -> T x (B,)
                strict=True,
            )
        ]


class StepSlices(NamedTuple):
    """One step's slices of ``StepInputs``' sequence-wide tensors."""

    keys: Tensor  # (B, heads, dk, N)
    value_gates: Tensor | None  # (U, B, heads*N, G) on the fused path
    values: Tensor | None  # (B, heads, N, dv) off the fused path
    keep: Tensor | None  # (B,)


_GATES = {"lstm": 4, "gru": 3}


# What runs one step, given ``_step_body``'s arguments: -> states, mask, null attention,
# attention on a set's elements (or None), and the backward's intermediates (or None).
StepBody = Callable[..., tuple[list[Tensor], Tensor, Tensor, Tensor | None, dict | None]]


def _uniform_(tensor: Tensor, fan_in: int) -> Tensor:
    """PyTorch's default ``nn.Linear`` / ``nn.LSTM`` init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.init.uniform_(tensor, -bound, bound)


class RIMs(nn.Module):
    """Recurrent Independent Mechanisms core.

    Args:
        input_size: size ``D`` of one input element.
        num_units: number of RIMs ``U``.
        k: number of active RIMs per step, ``1 <= k <= num_units``.
        hidden_size: state size ``H`` of one RIM (output size is ``num_units * hidden_size``).
        cell: ``"lstm"`` or ``"gru"``.
        input_heads: heads of the input attention (paper text: 1).
        input_key_size: key/query size per input head (paper: 64).
        input_value_size: value size per input head; a RIM's cell input is
            ``input_heads * input_value_size`` (paper: 4 x hidden_size; ``None`` means that).
        comm_heads: heads of the communication attention (paper: 4).
        comm_key_size: key/query size per communication head (paper: 32).
        comm_value_size: value size per communication head (paper: 32).
        dropout: dropout on both attentions' probabilities in training mode (paper: 0.1).
        query_bias: give each RIM's input query a bias (see the module docstring).
        comm_gate: the communication's output is ``sigmoid(read W_g + b_g) * tanh(read W_o +
            b_o)``, as in the authors' code, so each step adds less than 1 to any state entry
            and an LSTM RIM's state stays within (-2, 2). False: the linear output ``read W_o +
            b_o`` (the popular reimplementation's), under which the state can grow without
            bound over long episodes (it reached 7e17 and NaN gradients in a DoorKey-6x6 run).
        fuse_input_gates_max: precompute value x input-to-gate products for the whole sequence
            when ``num_elements * input_heads`` is at most this (saves a matmul per step; costs
            memory ``T*B*U*N*heads*gates``). Set 0 to never fuse. Same function either way.
        bf16_matmuls: compute the large matmuls that do not depend on the state (the input
            keys, values and value-gate products for the whole sequence, and in the
            hand-written backward the weight gradients summed over it) from bfloat16 operands,
            as autocast would. The recurrence (state products, cells, selection,
            communication) stays in the module's dtype, so every invariant still holds exactly.
            Several times faster on GPUs and CPUs with bfloat16 units; about 3 significant
            digits in those products.
        compile_steps: run each step's forward (and the hand-written backward's steps) through
            ``torch.compile``, which fuses their small elementwise ops; the same function to
            float rounding. Compiling takes seconds to a minute on first use; the eager code
            runs where it fails. Can be switched later by setting the attribute.
        triton_steps: run each step, forward and backward, as hand-written Triton kernels
            (``policies.triton_steps``): fewer launches than compiled steps, the same function
            to float rounding. For one input element and head and no dropout (a
            ``ValueError`` otherwise); where Triton or a CUDA device is missing the usual steps
            run, after one warning. Can be switched later by setting the attribute.
        cuda_graphs: on CUDA inputs, capture each input signature's forward (and backward) as
            CUDA graphs on its first call and replay them after (``policies.graphs``); the same
            function, without the thousands of kernel launches. Other inputs run eagerly. Can
            be switched later by setting the attribute.
    """

    def __init__(
        self,
        input_size: int,
        num_units: int = 6,
        k: int = 4,
        hidden_size: int = 100,
        cell: str = "lstm",
        input_heads: int = 1,
        input_key_size: int = 64,
        input_value_size: int | None = None,
        comm_heads: int = 4,
        comm_key_size: int = 32,
        comm_value_size: int = 32,
        dropout: float = 0.1,
        query_bias: bool = True,
        comm_gate: bool = True,
        fuse_input_gates_max: int = 4,
        bf16_matmuls: bool = False,
        compile_steps: bool = False,
        triton_steps: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__()
        if input_value_size is None:
            input_value_size = 4 * hidden_size if isinstance(hidden_size, int) else hidden_size
        check_positive(
            input_size=input_size,
            num_units=num_units,
            hidden_size=hidden_size,
            input_heads=input_heads,
            input_key_size=input_key_size,
            input_value_size=input_value_size,
            comm_heads=comm_heads,
            comm_key_size=comm_key_size,
            comm_value_size=comm_value_size,
        )
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_units:
            raise ValueError(f"k must be an integer in 1..num_units={num_units}, got {k!r}")
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if fuse_input_gates_max < 0:
            raise ValueError(f"fuse_input_gates_max must be >= 0, got {fuse_input_gates_max!r}")
        # (dropout matters in training only, where each call checks it)
        problem = triton_steps and triton_unsupported(input_heads, 0.0)
        if problem:
            raise ValueError(f"triton_steps: {problem}")

        self.input_size = input_size
        self.num_units = num_units
        self.k = k
        self.hidden_size = hidden_size
        self.cell = cell
        self.input_heads = input_heads
        self.input_key_size = input_key_size
        self.input_value_size = input_value_size
        self.comm_heads = comm_heads
        self.comm_key_size = comm_key_size
        self.comm_value_size = comm_value_size
        self.dropout = dropout
        self.query_bias = query_bias
        self.comm_gate = comm_gate
        self.fuse_input_gates_max = fuse_input_gates_max
        self.bf16_matmuls = bf16_matmuls
        # Training without dropout uses the hand-written backward of policies.rims_grad
        # (same function, fewer, larger kernels); set False to use autograd throughout.
        self.manual_backward = True
        self.compile_steps = compile_steps
        self.triton_steps = triton_steps
        self._triton_warned: set[str] = set()  # each reason the kernels did not run, once
        self.cuda_graphs = cuda_graphs
        # Captured CUDA graphs per input signature (built on the first CUDA call; not state).
        self._graphs: SequenceGraphs | None = None
        self.output_size = num_units * hidden_size

        U, H = num_units, hidden_size
        gates = _GATES[cell] * H
        read_size = input_heads * input_value_size  # one RIM's cell input
        query_size = input_heads * input_key_size
        comm_qkv = comm_heads * (2 * comm_key_size + comm_value_size)

        # Input attention: shared, bias-free key/value projections of the input elements.
        self.input_key = nn.Parameter(_uniform_(torch.empty(input_size, query_size), input_size))
        self.input_value = nn.Parameter(_uniform_(torch.empty(input_size, read_size), input_size))
        # Per-RIM weights applied to the RIM's own state h: [hidden-to-gates | input query].
        # Stacked so one batched matmul per step serves both.
        self.state_weight = nn.Parameter(_uniform_(torch.empty(U, H, gates + query_size), H))
        self.hidden_gate_bias = nn.Parameter(_uniform_(torch.empty(U, 1, gates), H))
        if query_bias:
            self.input_query_bias = nn.Parameter(_uniform_(torch.empty(U, 1, query_size), H))
        else:
            self.register_buffer("input_query_bias", torch.zeros(U, 1, query_size))
        # Per-RIM input-to-gate weights and bias (the bias is not scaled by attention).
        self.input_gate_weight = nn.Parameter(_uniform_(torch.empty(U, read_size, gates), H))
        self.input_gate_bias = nn.Parameter(_uniform_(torch.empty(U, 1, gates), H))
        # Communication: per-RIM query/key/value from the state, per-RIM output projection.
        self.comm_qkv = nn.Parameter(_uniform_(torch.empty(U, H, comm_qkv), H))
        comm_out_in = comm_heads * comm_value_size
        out = _uniform_(torch.empty(U, comm_out_in, H), comm_out_in)
        out_bias = _uniform_(torch.empty(U, 1, H), comm_out_in)
        if comm_gate:  # the gate's map beside the output map, so one matmul per step serves both
            out = torch.cat((out, _uniform_(torch.empty(U, comm_out_in, H), comm_out_in)), dim=-1)
            out_bias = torch.cat((out_bias, _uniform_(torch.empty(U, 1, H), comm_out_in)), dim=-1)
        # (U, heads*dv, H), or (U, heads*dv, 2H) with the gate: [output map | gate map]
        self.comm_out = nn.Parameter(out)
        self.comm_out_bias = nn.Parameter(out_bias)  # (U, 1, H or 2H), the same halves

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, num_units={self.num_units}, k={self.k}, "
            f"hidden_size={self.hidden_size}, cell={self.cell!r}, input_heads={self.input_heads}, "
            f"comm_heads={self.comm_heads}, comm_gate={self.comm_gate}, dropout={self.dropout}"
            + (", bf16_matmuls=True" if self.bf16_matmuls else "")
        )

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zeros: ``(h, c)`` for LSTM or ``(h,)`` for GRU, each ``(B, num_units, hidden_size)``."""
        device = self.input_key.device if device is None else device
        shape = (batch_size, self.num_units, self.hidden_size)
        dtype = self.input_key.dtype
        parts = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in range(parts))

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: Tensor, state: State, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State, CoreInfo]:
        """Run the sequence.

        x: ``(T, B, D)`` (one input element per step) or ``(T, B, N, D)`` (a set of N elements).
        state: from ``initial_state`` or a previous call, each ``(B, U, H)``.
        episode_starts: ``(T, B)`` bool or ``None``; where True the state is reset to zeros
            before step t.
        Returns ``out (T, B, U*H)``, the final state, and ``CoreInfo``: ``mask`` and
        ``null_attention`` ``(T, B, U)``, and for a set of N > 1 elements ``input_attention``
        ``(T, B, U, N)`` (each RIM's head-averaged attention on each element).
        """
        check_sequence_input(x, self.input_size, allow_set=True)
        if self.cuda_graphs and x.is_cuda:
            if self._graphs is None:
                self._graphs = SequenceGraphs(self._run, self, self._graph_settings)
            return self._graphs(x, state, episode_starts)
        return self._run(x, state, episode_starts)

    def _graph_settings(self) -> tuple:
        """What, beside the inputs and the train mode, changes the function a graph records."""
        return (self.compile_steps, self.triton_steps, self.bf16_matmuls, self.manual_backward,
                self.dropout, self.fuse_input_gates_max)  # fmt: skip

    def _run(
        self, x: Tensor, state: State, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State, CoreInfo]:
        """``forward`` run eagerly (also what a CUDA graph records)."""
        if x.dim() == 3:
            x = x.unsqueeze(2)  # (T, B, D) -> (T, B, 1, D): a set of one element
        T, B, _, _ = x.shape
        check_episode_starts(episode_starts, T, B)
        U, H = self.num_units, self.hidden_size
        # public (B, U, H) -> internal (U, B, H), contiguous like every state a step returns
        # (so a compiled step sees one memory layout, not two)
        hs = [s.transpose(0, 1).contiguous() for s in state]
        manual = self._use_manual_backward(x, hs)
        inp = self._prepare(x, episode_starts, manual)
        if manual:
            from policies.rims_grad import run_with_manual_backward

            out, hs, masks, nulls, attention = run_with_manual_backward(self, inp, hs)
        else:
            outputs, mask_list, null_list, attention_list = [], [], [], []
            body = self._step_function(hs[0], inp, saving=False)
            for at in inp.slices():
                hs, mask, null, element_attention = self._step(at, hs, inp, body=body)
                outputs.append(hs[0])
                mask_list.append(mask)
                null_list.append(null)
                attention_list.append(element_attention)
            out = torch.stack(outputs)  # T x (U,B,H) -> (T,U,B,H)
            masks, nulls = torch.stack(mask_list), torch.stack(null_list)  # T x (U,B) -> (T,U,B)
            several = attention_list[0] is not None  # _step reports it for N > 1 elements only
            attention = torch.stack(attention_list) if several else None  # T x (U,B,N)
        out = out.permute(0, 2, 1, 3).reshape(T, B, U * H)  # (T,U,B,H) -> (T,B,U*H)
        info = CoreInfo(
            mask=masks.transpose(1, 2),  # (T,U,B) -> (T,B,U)
            null_attention=nulls.transpose(1, 2),  # (T,U,B) -> (T,B,U)
            input_attention=None if attention is None else attention.transpose(1, 2),  # (T,B,U,N)
        )
        return out, tuple(s.transpose(0, 1) for s in hs), info  # (U,B,H) -> (B,U,H)

    def matmul_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The operand dtype of the large state-independent matmuls for inputs of ``dtype``."""
        return torch.bfloat16 if self.bf16_matmuls else dtype

    def _fuses_input_gates(self, num_elements: int) -> bool:
        return num_elements * self.input_heads <= self.fuse_input_gates_max

    def _attention_dropout_on(self) -> bool:
        return self.training and self.dropout > 0

    def _use_manual_backward(self, x: Tensor, hs: list[Tensor]) -> bool:
        """The hand-written backward (``policies.rims_grad``) serves training without dropout;
        acting and dropout use autograd. x: ``(T, B, N, D)``; hs: the states."""
        if not (self.manual_backward and torch.is_grad_enabled()):
            return False
        if self._attention_dropout_on():
            return False
        return any(p.requires_grad for p in self.parameters()) or any(
            t.requires_grad for t in (x, *hs)
        )

    def _prepare(
        self, x: Tensor, episode_starts: Tensor | None, manual_backward: bool = False
    ) -> StepInputs:
        """Everything that does not depend on the state, for the whole sequence at once.

        x: ``(T, B, N, D)``. The keys carry the 1/sqrt(dk) of the scores, so no step divides.
        With ``manual_backward`` the value-gate products are built without a graph: the
        hand-written backward differentiates them from ``gate_values``.
        """
        T, B, N, _ = x.shape
        U, H = self.num_units, self.hidden_size
        heads, dk, dv = self.input_heads, self.input_key_size, self.input_value_size
        gates = _GATES[self.cell] * H
        low = self.matmul_dtype(x.dtype)  # operands of the large matmuls; results in x.dtype
        x_low = x.to(low)
        keys = (x_low @ (self.input_key / math.sqrt(dk)).to(low)).to(x.dtype)  # (T,B,N,heads*dk)
        keys = keys.view(T, B, N, heads, dk).permute(0, 1, 3, 4, 2)  # -> (T,B,heads,dk,N)
        values = (x_low @ self.input_value.to(low)).view(T, B, N, heads, dv)  # (T,B,N,D) -> ..
        value_gates = gate_values = None
        if self._fuses_input_gates(N):
            # Per-RIM input-to-gate products of every value: read_u @ W_u = sum_{h,n} p * (v W_u,h).
            flat = values.reshape(T * B * N, heads, dv)  # (T,B,N,heads,dv) -> (TBN,heads,dv)
            with torch.no_grad() if manual_backward else contextlib.nullcontext():
                # (U,heads*dv,G) -> (U,heads,dv,G)
                w = self.input_gate_weight.to(low).view(U, heads, dv, gates)
                # Per head, one matmul broadcast over the RIMs (an einsum here copied the whole
                # weight into another layout on every call): (TBN,dv) @ (U,dv,G) -> (U,TBN,G).
                per_head = [torch.matmul(flat[:, h], w[:, h]).to(x.dtype) for h in range(heads)]
                if heads == 1:  # RIM-major as it comes, no copy: (U,TBN,G) -> (U,T,B,N,G)
                    value_gates = per_head[0].view(U, T, B, N, gates)
                else:  # (heads,U,TBN,G) -> (heads,U,T,B,N,G) -> (U,T,B,heads,N,G) -> flat
                    value_gates = (
                        torch.stack(per_head)
                        .view(heads, U, T, B, N, gates)
                        .permute(1, 2, 3, 0, 4, 5)
                        .reshape(U, T, B, heads * N, gates)
                    )
            gate_values = flat if manual_backward else None
            values = None
        else:
            # (T,B,N,heads,dv) -> (T,B,heads,N,dv)
            values = values.to(x.dtype).permute(0, 1, 3, 2, 4)
        lstm = self.cell == "lstm"
        # Without autograd (acting, T=1 per call) scaling each step's few communication scores
        # is cheaper than a scaled copy of the whole weight per call.
        acting = not torch.is_grad_enabled()
        # LSTM: the input bias adds to the same gates as the hidden bias; fold it in once.
        gate_bias = self.hidden_gate_bias + self.input_gate_bias if lstm else self.hidden_gate_bias
        return StepInputs(
            keys=keys,
            value_gates=value_gates,
            gate_values=gate_values,
            values=values,
            state_bias=torch.cat((gate_bias, self.input_query_bias), dim=-1),
            input_bias=None if lstm else self.input_gate_bias,
            comm_weight=self.comm_qkv if acting else self._comm_weight(),
            comm_score_scale=self.comm_key_size**-0.5 if acting else None,
            keep=None if episode_starts is None else keep_factor(episode_starts, x.dtype),
            one_element=N * heads == 1,  # softmax over [null, x] is a sigmoid of x's score
            dropout=self._attention_dropout_on(),
        )

    def _step(
        self,
        at: StepSlices,
        hs: list[Tensor],
        inp: StepInputs,
        saved: list[dict] | None = None,
        body: StepBody | None = None,
    ) -> tuple[list[Tensor], Tensor, Tensor, Tensor | None]:
        """The step whose slices of ``inp`` are ``at``: states ``(U, B, H)`` -> new states, mask
        and null attention ``(U, B)``, and for a set of N > 1 elements the attention on each
        ``(U, B, N)`` (else None). With ``saved``, the intermediates the hand-written backward
        needs are appended to it. ``body``: what runs it, as ``_step_function`` chooses for the
        sequence (chosen here if not given)."""
        if body is None:
            body = self._step_function(hs[0], inp, saved is not None)
        out, mask, null, element_attention, intermediates = body(
            self, hs, at.keys, at.value_gates, at.values, at.keep, inp, saved is not None
        )
        if saved is not None:
            saved.append(intermediates)
        return out, mask, null, element_attention

    def _step_function(self, state: Tensor, inp: StepInputs, saving: bool) -> StepBody:
        """What runs every step of a sequence with ``_step_body``'s arguments: the Triton
        kernels, the compiled step, or ``_step_body`` itself. Nothing it reads changes between
        the steps of one call, so a call chooses once. ``state``: a state ``(U, B, H)``;
        ``saving``: the steps keep the hand-written backward's intermediates."""
        # Inside a caller's compiled region (a compiled acting step) dynamo traces the body.
        compiling = torch.compiler.is_compiling()
        if self.triton_steps and not compiling:
            problem = self._triton_problem(state, inp, saving)
            if problem is None:
                return triton_steps.step
            if problem not in self._triton_warned:
                self._triton_warned.add(problem)
                message = triton_steps.fallback_message(problem, self.compile_steps)
                warnings.warn(f"RIMs triton_steps: {message}", RuntimeWarning, stacklevel=3)
        return _COMPILED_STEP if self.compile_steps and not compiling else RIMs._step_body

    def _triton_problem(self, state: Tensor, inp: StepInputs, saving: bool) -> str | None:
        """Why the Triton kernels cannot run this step (see ``triton_steps``), or None."""
        dropout = self.dropout if inp.dropout else 0.0
        problem = triton_unsupported(self.input_heads, dropout)
        if problem is None:
            problem = triton_steps.unavailable(state.device)
        if problem is None and state.dtype not in (torch.float32, torch.float64):
            problem = f"the kernels compute in float32 or float64, not {state.dtype}"
        if problem is None and (inp.value_gates is None or not inp.one_element):
            problem = "the kernels read one input element (not a set: --rims-spatial)"
        if problem is None and torch.is_grad_enabled() and not saving:
            problem = "autograd records this step (manual_backward is off)"
        return problem

    def _step_body(
        self,
        hs: list[Tensor],
        keys: Tensor,
        value_gates: Tensor | None,
        values: Tensor | None,
        keep: Tensor | None,
        inp: StepInputs,
        keep_intermediates: bool,
    ) -> tuple[list[Tensor], Tensor, Tensor, Tensor | None, dict | None]:
        """One step from this step's slices of ``inp``: keys ``(B, heads, dk, N)``, value_gates
        ``(U, B, heads*N, G)``, values ``(B, heads, N, dv)``, keep ``(B,)`` (each None where
        ``inp`` has none); the rest of ``inp`` is shared by all steps. A pure function of its
        arguments (``torch.compile`` compiles it once for all steps). Returns what ``_step``
        does and, with ``keep_intermediates``, what the hand-written backward needs."""
        U, B, _ = hs[0].shape
        heads, dk, dv = self.input_heads, self.input_key_size, self.input_value_size
        gates = _GATES[self.cell] * self.hidden_size
        h_before_reset = hs[0]
        if keep is not None:  # the reset at episode starts (keep is 0 or 1 per row)
            hs = [s * keep.view(1, B, 1) for s in hs]
        # One batched matmul: each RIM's own [hidden-to-gates | query] from its own state,
        # (U,B,H) -> (U,B,G+Q).
        if torch.compiler.is_compiling():
            # Compiled, the reset applies to the product's rows instead (the same values: a
            # reset row is exactly 0 either way), so that it fuses into the kernel after the
            # matmul, with the bias, rather than being a kernel of its own before it. (The bias
            # is added the same way without resets, so that rows that are not reset round
            # alike with and without them.)
            products = torch.bmm(h_before_reset, self.state_weight)
            if keep is not None:
                products = torch.where(keep.view(1, B, 1) > 0, products, 0.0)
            hq = products + inp.state_bias
        else:
            hq = torch.baddbmm(inp.state_bias, hs[0], self.state_weight)
        gates_h, query = hq.split((gates, heads * dk), dim=-1)
        query = query.view(U, B, heads, 1, dk)  # (U,B,heads*dk) -> (U,B,heads,1,dk)
        # Scores of the real elements; the null element's key is 0, so its score is exactly 0.
        if inp.one_element:  # dot products: (U,B,1,dk) * (B,1,dk) -> sum -> (U,B,1,1)
            scores = (query.view(U, B, 1, dk) * keys.view(B, 1, dk)).sum(-1, keepdim=True)
        else:  # batched over (B, heads), all RIMs' queries at once (broadcasting over U would
            # copy the keys U times): (U,B,heads,1,dk) -> (B,heads,U,dk), @ (B,heads,dk,N)
            # -> (B,heads,U,N) -> (U,B,heads,N)
            scores = (query.squeeze(3).permute(1, 2, 0, 3) @ keys).permute(2, 0, 1, 3)
        probs = element_attention = read_in = None
        if inp.one_element:
            read = torch.sigmoid(scores)  # (U, B, 1, 1)
            null_attention = torch.sigmoid(-scores).view(U, B)  # (U,B,1,1) -> (U,B)
        else:
            probs = torch.softmax(F.pad(scores, (1, 0)), dim=-1)  # (U,B,heads,1+N), null first
            null_attention = probs[..., 0].mean(-1)  # (U, B), averaged over heads
            read = probs[..., 1:]  # (U, B, heads, N)
            if read.shape[-1] > 1:
                element_attention = read.detach().mean(2)  # (U, B, heads, N) -> (U, B, N)
        mask = self._select(self._selection_key(scores).detach())  # (U, B) bool
        if inp.dropout:
            read = F.dropout(read, self.dropout, True)
        N = read.shape[-1]
        if value_gates is not None and inp.one_element:
            # One product per RIM and row: (U,B,1,1) -> (U,B,1) times (U,B,1,G) -> (U,B,G)
            gates_x = read.view(U, B, 1) * value_gates.view(U, B, gates)
        elif value_gates is not None:
            # (U,B,1,heads*N) @ (U,B,heads*N,G) -> (U,B,1,G) -> (U,B,G)
            gates_x = (read.reshape(U, B, 1, heads * N) @ value_gates).squeeze(2)
        else:  # batched over (B, heads), as the scores: (U,B,heads,N) -> (B,heads,U,N),
            # @ (B,heads,N,dv) -> (B,heads,U,dv) -> (U,B,heads,dv) -> (U,B,heads*dv)
            read_in = (read.permute(1, 2, 0, 3) @ values).permute(2, 0, 1, 3)
            read_in = read_in.reshape(U, B, heads * dv)
            gates_x = torch.bmm(read_in, self.input_gate_weight)  # -> (U, B, G)
        if inp.input_bias is not None:
            gates_x = gates_x + inp.input_bias
        new, acts = self._cell(gates_x, gates_h, hs)
        # Inactive RIMs keep their state exactly.
        m = mask.unsqueeze(-1)  # (U, B) -> (U, B, 1)
        kept = [torch.where(m, n, s) for n, s in zip(new, hs)]
        comm, comm_parts = self._communicate(kept[0], inp)
        out = [torch.where(m, kept[0] + comm, kept[0]), *kept[1:]]
        intermediates = None
        if keep_intermediates:
            intermediates = dict(hs=hs, query=query, read=read, probs=probs, acts=acts, mask=m,
                                 kept=kept[0], comm=comm_parts, read_in=read_in)  # fmt: skip
        return out, mask, null_attention, element_attention, intermediates

    def _selection_key(self, scores: Tensor) -> Tensor:
        """Scores of the real elements ``(U, B, heads, N)`` -> ``(U, B)``: the logit of each
        RIM's head-averaged null attention, which orders RIMs as the null attention does but
        does not round to a tie where it saturates (in float32, sigmoid(-s) is exactly 1.0
        for every s < -17, so RIMs that ignore the input would tie and be chosen by index)."""
        U, B, heads, N = scores.shape
        if heads == N == 1:  # the null attention is sigmoid(-score)
            return -scores.view(U, B)  # (U, B, 1, 1) -> (U, B)
        odds = torch.logsumexp(scores, dim=-1)  # (U,B,heads,N) -> (U,B,heads): log((1-p)/p)
        if heads == 1:  # the null attention is sigmoid(-odds)
            return -odds.view(U, B)  # (U, B, 1) -> (U, B)
        # logit(mean_h p_h) = log sum_h p_h - log sum_h (1 - p_h), each term from a logsigmoid
        return torch.logsumexp(F.logsigmoid(-odds), -1) - torch.logsumexp(F.logsigmoid(odds), -1)

    def _select(self, key: Tensor) -> Tensor:
        """``(U, B)`` selection key (see ``_selection_key``) -> ``(U, B)`` bool mask of the
        ``k`` RIMs with the smallest key, i.e. the least attention on the null.

        Ties go to the lower index and NaN ranks above every number, so exactly k are chosen
        and the choice is the same on every device. Eagerly a stable sort picks them (three
        ops); in a compiled step each RIM's rank is counted instead, elementwise over the
        ``(U, U, B)`` pairs, which fuses into the step's kernels where a sort (or topk) would be
        kernels of its own."""
        U = self.num_units
        if self.k == U:
            return torch.ones_like(key, dtype=torch.bool)
        if not torch.compiler.is_compiling():
            idx = torch.sort(key, dim=0, stable=True).indices[: self.k]  # (U, B) -> (k, B)
            return torch.zeros_like(key, dtype=torch.bool).scatter_(0, idx, True)
        # before[u, v, b]: RIM v ranks before RIM u, in the order (is NaN, key, index).
        mine, other = key.unsqueeze(1), key.unsqueeze(0)  # (U, B) -> (U, 1, B), (1, U, B)
        mine_nan, other_nan = mine.isnan(), other.isnan()
        index = torch.arange(U, device=key.device)
        earlier = index.view(1, U, 1) < index.view(U, 1, 1)  # (U, U, 1): v < u
        same = (other == mine) | (other_nan & mine_nan)
        before = (other_nan == mine_nan) & ((other < mine) | (same & earlier))
        before = before | (~other_nan & mine_nan)
        return before.sum(1) < self.k  # (U, U, B) -> (U, B): rank < k

    def _cell(
        self, gates_x: Tensor, gates_h: Tensor, hs: list[Tensor]
    ) -> tuple[list[Tensor], tuple[Tensor, ...]]:
        """All RIMs' cells at once. gates_x, gates_h: ``(U, B, G)``; hs: states ``(U, B, H)``.
        Returns the new states and the activations the hand-written backward reuses."""
        if self.cell == "lstm":
            H = self.hidden_size
            gates = gates_x + gates_h  # (U, B, 4H): i, f, g, o
            i, f, _, o = torch.sigmoid(gates).chunk(4, dim=-1)  # sigmoid of g is unused
            g = torch.tanh(gates[..., 2 * H : 3 * H])
            c_new = torch.addcmul(f * hs[1], i, g)
            tanh_c = torch.tanh(c_new)
            return [o * tanh_c, c_new], (i, f, g, o, tanh_c)
        # GRU, PyTorch's gate order (r, z, n); r gates the hidden part of n only.
        (h,) = hs
        x_r, x_z, x_n = gates_x.chunk(3, dim=-1)
        h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return [n + z * (h - n)], (r, z, n, h_n)

    def _comm_weight(self) -> Tensor:
        """``comm_qkv`` with the query columns scaled by 1/sqrt(key size), once per call."""
        q_cols = self.comm_heads * self.comm_key_size
        scale = torch.ones(self.comm_qkv.shape[-1], dtype=self.comm_qkv.dtype,
                           device=self.comm_qkv.device)  # fmt: skip
        scale[:q_cols] = 1.0 / math.sqrt(self.comm_key_size)
        return self.comm_qkv * scale

    def _communicate(self, h: Tensor, inp: StepInputs) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        """``(U, B, H)`` states -> ``(U, B, H)`` what each RIM adds from all RIMs, and the
        intermediates ``(q, k, v, attn, read, gate, tanh_out)`` the hand-written backward reuses
        (the last two None without ``comm_gate``). ``inp`` gives ``comm_weight``,
        ``comm_score_scale`` and ``dropout``."""
        U, B, H = h.shape
        heads, dk, dv = self.comm_heads, self.comm_key_size, self.comm_value_size
        score_scale = inp.comm_score_scale
        qkv = torch.bmm(h, inp.comm_weight)  # (U,B,H) -> (U,B,heads*(2dk+dv))
        q, k, v = qkv.split((heads * dk, heads * dk, heads * dv), dim=-1)
        q = q.view(U, B, heads, dk)  # (U,B,heads*dk) -> (U,B,heads,dk)
        k = k.view(U, B, heads, dk)  # (U,B,heads*dk) -> (U,B,heads,dk)
        v = v.view(U, B, heads, dv)  # (U,B,heads*dv) -> (U,B,heads,dv)
        # With only U RIMs, broadcast products beat batched matmuls (which would copy q, k, v
        # into a (B*heads, U, d) layout and back every step).
        # scores[i,j] = q_i . k_j: (U,1,B,heads,dk) * (1,U,B,heads,dk) -> sum -> (U,U,B,heads)
        scores = (q.unsqueeze(1) * k.unsqueeze(0)).sum(-1)
        if score_scale is not None:
            scores = scores * score_scale
        attn = torch.softmax(scores, dim=1)  # over the RIMs read from, j
        if inp.dropout:
            attn = F.dropout(attn, self.dropout, True)
        # read_i = sum_j attn[i,j] v_j: (U,U,B,heads,1) * (1,U,B,heads,dv) -> sum over j
        # -> (U,B,heads,dv) -> (U,B,heads*dv)
        read = (attn.unsqueeze(-1) * v.unsqueeze(0)).sum(1).view(U, B, heads * dv)
        # (U,B,heads*dv) @ (U,heads*dv,H or 2H) -> (U,B,H or 2H)
        if torch.compiler.is_compiling():
            # Compiled, the bias adds in the kernel after the matmul: baddbmm would first copy
            # the broadcast bias into its output, a kernel of its own on a GPU.
            out = torch.bmm(read, self.comm_out) + self.comm_out_bias
        else:  # eagerly the sum in the matmul saves the add's kernel
            out = torch.baddbmm(self.comm_out_bias, read, self.comm_out)
        if not self.comm_gate:
            return out, (q, k, v, attn, read, None, None)
        tanh_out = torch.tanh(out[..., :H])  # (U, B, H)
        gate = torch.sigmoid(out[..., H:])  # (U, B, H)
        return gate * tanh_out, (q, k, v, attn, read, gate, tanh_out)


_COMPILED_STEP = CompiledStep(RIMs._step_body, "RIMs step")
