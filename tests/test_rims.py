"""Invariants of the RIMs core (paper rules, the core interface, both cells, both input paths)."""

from __future__ import annotations

import math

import pytest
import torch

from policies.rims import RIMs
from tests.rims_reference import reference_sequence

CELLS = ["lstm", "gru"]
# The ways a RIMs core can compute its steps; the invariants below must hold on each.
PATHS = {
    "fp32": {},
    "bf16": dict(bf16_matmuls=True),  # bfloat16 operands in the large matmuls
    "compiled": dict(compile_steps=True),  # each step (forward and backward) torch.compile'd
}


def make_rims(cell: str = "lstm", dtype: torch.dtype = torch.float32, **overrides) -> RIMs:
    kwargs = dict(
        input_size=10,
        num_units=5,
        k=2,
        hidden_size=6,
        cell=cell,
        input_key_size=8,
        input_value_size=7,
        comm_key_size=4,
        comm_value_size=3,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    return RIMs(**kwargs).to(dtype).eval()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("elements", [1, 3])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("fuse", [0, 100])
@pytest.mark.parametrize("grad", [True, False])  # learning (grad) and acting (no grad) paths
@pytest.mark.parametrize("comm_gate", [True, False])  # gated tanh or linear communication output
def test_matches_naive_reference_float64(cell, elements, heads, fuse, grad, comm_gate):
    m = make_rims(
        cell, torch.float64, input_heads=heads, fuse_input_gates_max=fuse, comm_gate=comm_gate
    )
    x = torch.randn(6, 3, elements, 10, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        out, _, info = m(x, m.initial_state(3))
    ref_out, ref_mask, ref_null = reference_sequence(m, x)
    assert torch.equal(info.mask, ref_mask)
    torch.testing.assert_close(info.null_attention, ref_null, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("elements, heads", [(1, 1), (3, 2)])
@pytest.mark.parametrize("fuse, manual", [(0, False), (0, True), (100, True)])
def test_gradients_match_naive_reference_float64(cell, elements, heads, fuse, manual):
    """The gradients of the input and of every parameter are the naive reference's, on the
    plain path (each step reads the values) through autograd (per-step slices of the
    precomputed keys and values) and through the hand-written backward, and on the fused path
    (the hand-written backward)."""
    m = make_rims(cell, torch.float64, input_heads=heads, fuse_input_gates_max=fuse)
    m.manual_backward = manual
    x = torch.randn(6, 3, elements, 10, dtype=torch.float64)
    weights = torch.randn(6, 3, m.output_size, dtype=torch.float64)
    grads = []
    for run in (lambda xr: m(xr, m.initial_state(3))[0], lambda xr: reference_sequence(m, xr)[0]):
        m.zero_grad()
        xr = x.clone().requires_grad_()
        (run(xr) * weights).sum().backward()
        grads.append([xr.grad, *(p.grad.clone() for p in m.parameters())])
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for name, got, expected in zip(names, *grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("elements", [1, 4])
def test_fused_and_plain_paths_agree_float32(cell, elements):
    fused = make_rims(cell, input_heads=2, fuse_input_gates_max=100)
    plain = make_rims(cell, input_heads=2, fuse_input_gates_max=0)
    x = torch.randn(8, 4, elements, 10)
    a, _, info_a = fused(x, fused.initial_state(4))
    b, _, info_b = plain(x, plain.initial_state(4))
    assert torch.equal(info_a.mask, info_b.mask)
    rel = (a - b).norm() / b.norm()
    assert rel < 1e-5


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("path", PATHS)
def test_exactly_k_active_and_they_are_the_least_null(cell, path):
    m = make_rims(cell, num_units=6, k=4, **PATHS[path])
    x = torch.randn(9, 5, 10)
    _, _, info = m(x, m.initial_state(5))
    assert info.mask.shape == (9, 5, 6) and info.mask.dtype == torch.bool
    assert (info.mask.sum(-1) == 4).all()
    # Every active RIM put no more attention on the null than any inactive one.
    null = info.null_attention
    worst_active = null.masked_fill(~info.mask, -1.0).amax(-1)
    best_inactive = null.masked_fill(info.mask, 2.0).amin(-1)
    assert (worst_active <= best_inactive).all()
    assert ((null > 0) & (null < 1)).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("elements", "heads"), [(1, 1), (3, 1), (3, 2)])
def test_selection_ranks_rims_whose_null_attention_rounds_to_one(path, elements, heads):
    """RIMs that all but ignore the input have a float32 null attention of exactly 1.0; the
    selection still ranks them by how much they attend to the null (as float64 does), not by
    their index."""
    m = make_rims(num_units=6, k=3, input_heads=heads, **PATHS[path])
    dk = m.input_key_size
    scores = torch.tensor([-20.0, -25.0, -18.0, 3.0, -30.0, -22.0])  # unit u's score on e_0
    with torch.no_grad():
        # key(x) = x[:dk] in every head (the keys carry 1/sqrt(dk)); h = 0 at the first step,
        # so each RIM's query is its bias: scores[u] times e_0 in every head.
        m.input_key.copy_(torch.eye(10, dk).repeat(1, heads) * dk**0.5)
        m.input_query_bias.zero_()
        m.input_query_bias[:, 0, ::dk] = scores.view(6, 1)
    x = torch.zeros(1, 2, elements, 10)
    x[:, :, :, 0] = torch.tensor([1.0, 1.5, 2.0])[:elements]  # scores s, 1.5 s, 2 s
    _, _, info = m(x, m.initial_state(2))
    null = info.null_attention[0]  # (B, U)
    assert (null[:, [0, 1, 2, 4, 5]] == 1.0).all()  # the premise: in float32 five RIMs tie
    m64 = m.double()
    _, _, info64 = m64(x.double(), m64.initial_state(2))
    least_null = info64.null_attention[0].argsort(-1)[:, :3]  # float64 has no ties here
    assert (info64.null_attention[0].sort(-1).values.diff(dim=-1) > 0).all()
    expected = torch.zeros(2, 6, dtype=torch.bool).scatter_(1, least_null, True)
    assert expected[0].tolist() == [True, False, True, True, False, False]
    assert torch.equal(info.mask[0], expected)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("path", PATHS)
def test_inactive_rims_keep_their_state_bit_for_bit(cell, path):
    m = make_rims(cell, **PATHS[path])
    x = torch.randn(10, 4, 10)
    state = m.initial_state(4)
    kept = changed = 0
    for t in range(10):
        _, new_state, info = m(x[t : t + 1], state)
        inactive = ~info.mask[0]  # (B, U)
        for old, new in zip(state, new_state):
            assert torch.equal(new[inactive], old[inactive])
            # Active RIMs do move (otherwise the test above would be vacuous).
            changed += int((new[~inactive] != old[~inactive]).any())
        kept += int(inactive.sum())
        state = new_state
    assert kept > 0 and changed > 0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("elements", [None, 3])
@pytest.mark.parametrize("path", PATHS)
def test_stepwise_equals_one_sequence_call(cell, elements, path):
    m = make_rims(cell, **PATHS[path])
    shape = (7, 3, 10) if elements is None else (7, 3, elements, 10)
    x = torch.randn(*shape)
    starts = torch.zeros(7, 3, dtype=torch.bool)
    starts[4, 1] = True
    out, final, info = m(x, m.initial_state(3), starts)
    state, outs, masks = m.initial_state(3), [], []
    for t in range(7):
        o, state, i = m(x[t : t + 1], state, starts[t : t + 1])
        outs.append(o)
        masks.append(i.mask)
    # bfloat16 products of one row may round differently in a GEMM of another height
    tol = dict(rtol=1e-2, atol=1e-3) if path == "bf16" else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(outs), out, **tol)
    assert torch.equal(torch.cat(masks), info.mask)
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("path", PATHS)
def test_episode_start_equals_fresh_state_and_does_not_leak(cell, path):
    m = make_rims(cell, **PATHS[path])
    x = torch.randn(8, 3, 10)
    plain, _, _ = m(x, m.initial_state(3))
    starts = torch.zeros(8, 3, dtype=torch.bool)
    starts[5, 1] = True
    out, _, _ = m(x, m.initial_state(3), starts)
    fresh, _, _ = m(x[5:, 1:2], m.initial_state(1))
    tol = dict(rtol=1e-2, atol=1e-3) if path == "bf16" else dict(rtol=1e-5, atol=1e-6)  # as above
    torch.testing.assert_close(out[5:, 1:2], fresh, **tol)
    # The other sequences and the steps before the start are untouched.
    torch.testing.assert_close(out[:, [0, 2]], plain[:, [0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(out[:5], plain[:5], rtol=0, atol=0)
    assert not torch.allclose(out[5:, 1], plain[5:, 1])
    # A start at t=0 discards whatever state was passed in.
    warm = tuple(torch.randn_like(s) for s in m.initial_state(3))
    all_start = torch.zeros(8, 3, dtype=torch.bool)
    all_start[0] = True
    torch.testing.assert_close(m(x, warm, all_start)[0], plain, rtol=0, atol=0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("path", PATHS)
def test_inactive_output_does_not_depend_on_current_input(cell, path):
    m = make_rims(cell, **PATHS[path])
    x = torch.randn(4, 2, 10, requires_grad=True)
    out, _, info = m(x, m.initial_state(2))
    H = m.hidden_size
    t, b = 3, 1
    for u in range(m.num_units):
        (grad,) = torch.autograd.grad(out[t, b, u * H : (u + 1) * H].sum(), x, retain_graph=True)
        if info.mask[t, b, u]:
            assert grad[t, b].abs().sum() > 0
        else:
            assert torch.equal(grad[t, b], torch.zeros_like(grad[t, b]))
        assert torch.equal(grad[t, 1 - b], torch.zeros_like(grad[t, 1 - b]))  # no batch leak


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("path", PATHS)
def test_gradient_flows_unchanged_through_kept_state(cell, path):
    m = make_rims(cell, **PATHS[path])
    x = torch.randn(1, 3, 10)
    state = tuple(torch.randn_like(s).requires_grad_() for s in m.initial_state(3))
    _, new_state, info = m(x, state)
    mask = info.mask[0]  # (B, U)
    b, u = (~mask).nonzero()[0].tolist()
    for old, new in zip(state, new_state):
        w = torch.randn(m.hidden_size)
        (grad,) = torch.autograd.grad((new[b, u] * w).sum(), old, retain_graph=True)
        expected = torch.zeros_like(old)
        expected[b, u] = w
        assert torch.equal(grad, expected)


def test_gated_communication_keeps_the_state_bounded():
    """With the gated tanh output each active step adds less than 1 per state entry: an LSTM
    RIM's state stays within (-2, 2) and a GRU RIM's grows by less than 2 per step, whatever the
    weights. With the linear output the same weights blow the state up (the failure the gate
    prevents: 1e17 states and NaN gradients in a long DoorKey-6x6 run)."""
    x = torch.randn(300, 4, 10)
    for cell in CELLS:
        for gate in (True, False):
            m = make_rims(cell, num_units=6, k=4, comm_gate=gate, comm_key_size=8)
            with torch.no_grad():
                m.comm_out.mul_(8.0)  # a communication that amplifies: gain well above 1
                m.comm_qkv.mul_(3.0)
                out, _, _ = m(x, m.initial_state(4))
            peak = out.abs().amax(dim=(1, 2))  # (T,)
            if not gate:
                assert not (peak[-1] < 1e6)  # huge, inf or NaN
            elif cell == "lstm":
                assert peak.max() < 2.0
            else:
                assert (peak < 2.0 * torch.arange(1, 301)).all()


def test_selection_is_not_differentiated():
    m = make_rims("lstm")
    m.manual_backward = False  # with autograd throughout, the info tensors are graph nodes
    x = torch.randn(3, 2, 10)
    _, _, info = m(x, m.initial_state(2))
    assert not info.mask.requires_grad
    # The null attention itself is differentiable (it is also the read weight).
    assert info.null_attention.requires_grad


def test_set_input_is_permutation_invariant_and_one_element_equals_flat():
    m = make_rims("lstm", input_heads=2)
    x = torch.randn(5, 3, 4, 10)
    out, _, info = m(x, m.initial_state(3))
    perm = torch.tensor([2, 0, 3, 1])
    out_p, _, info_p = m(x[:, :, perm], m.initial_state(3))
    torch.testing.assert_close(out_p, out, rtol=1e-5, atol=1e-6)
    assert torch.equal(info_p.mask, info.mask)
    flat, _, flat_info = m(x[:, :, 0], m.initial_state(3))
    single, _, _ = m(x[:, :, :1], m.initial_state(3))
    torch.testing.assert_close(flat, single, rtol=0, atol=0)
    # Where each RIM looks: (T, B, U, N), with the null's share summing to one.
    attention = info.input_attention
    assert attention.shape == (5, 3, 5, 4) and flat_info.input_attention is None
    total = attention.sum(-1) + info.null_attention
    torch.testing.assert_close(total, torch.ones_like(total))
    torch.testing.assert_close(info_p.input_attention, attention[..., perm])


@pytest.mark.parametrize("cell", CELLS)
def test_k_equal_num_units_runs_every_rim(cell):
    m = make_rims(cell, k=5)
    x = torch.randn(4, 2, 10)
    state = m.initial_state(2)
    _, new_state, info = m(x, state)
    assert info.mask.all()
    assert (new_state[0] != 0).all()


@pytest.mark.parametrize("k", [1, 2, 4])
def test_counted_ranks_select_what_the_sort_selects(monkeypatch, k):
    """Compiled steps select by counting ranks, eager ones by a stable sort: the same k RIMs,
    with ties to the lower index and NaN after every number, +-inf included."""
    m = make_rims(k=k)
    torch.manual_seed(0)
    key = torch.randint(0, 3, (5, 3000)).float()  # (U, B), many ties
    for value, share in ((float("nan"), 0.1), (float("inf"), 0.1), (-float("inf"), 0.1)):
        key[torch.rand(key.shape) < share] = value
    by_sort = m._select(key)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    by_rank = m._select(key)
    assert torch.equal(by_rank, by_sort)
    assert (by_sort.sum(0) == k).all()
    # The order (is NaN, key, index), checked column by column in plain Python.
    for b in range(200):
        column = key[:, b].tolist()
        # NaN compares unequal to itself: sort it by a 0 in the key's second place instead
        nan_last = [(1, 0.0) if math.isnan(v) else (0, v) for v in column]
        order = sorted(range(5), key=lambda u: (*nan_last[u], u))
        expected = [u in order[:k] for u in range(5)]
        assert by_sort[:, b].tolist() == expected


@pytest.mark.parametrize("path", PATHS)
def test_tied_rims_are_chosen_by_index(path):
    """Without query biases every RIM ties at the first step (all queries are 0); the lowest
    indices are chosen, on every path."""
    m = make_rims(query_bias=False, k=3, **PATHS[path])
    _, _, info = m(torch.randn(1, 4, 10), m.initial_state(4))
    assert info.mask[0].tolist() == [[True, True, True, False, False]] * 4


def test_dropout_only_in_training_mode():
    m = make_rims("lstm", dropout=0.5)
    x = torch.randn(5, 4, 10)
    s = m.initial_state(4)
    torch.testing.assert_close(m(x, s)[0], m(x, s)[0], rtol=0, atol=0)
    m.train()
    torch.manual_seed(1)
    a = m(x, s)[0]
    torch.manual_seed(2)
    b = m(x, s)[0]
    assert not torch.allclose(a, b)


def test_interface_shapes_and_initial_state():
    m = RIMs(12, num_units=6, k=3, hidden_size=5, cell="lstm")
    assert m.output_size == 30
    h, c = m.initial_state(4)
    assert h.shape == c.shape == (4, 6, 5) and not h.any() and not c.any()
    (g,) = RIMs(12, hidden_size=5, cell="gru").initial_state(2)
    assert g.shape == (2, 6, 5)
    assert m.input_value_size == 20  # paper default: 4 x hidden


def test_null_key_and_value_are_exactly_zero():
    m = make_rims("lstm")
    zero = torch.zeros(1, 10)
    assert torch.equal(zero @ m.input_key, torch.zeros(1, m.input_key.shape[1]))
    assert torch.equal(zero @ m.input_value, torch.zeros(1, m.input_value.shape[1]))
    # With query_bias=False and a zero state every query is 0: all RIMs tie at 1/(N+1).
    m2 = make_rims("lstm", query_bias=False)
    _, _, info = m2(torch.randn(1, 2, 3, 10), m2.initial_state(2))
    torch.testing.assert_close(info.null_attention, torch.full((1, 2, 5), 0.25))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"k": 0}, "k"),
        ({"k": 6}, "k"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_units": -1}, "num_units"),
        ({"input_heads": 0}, "input_heads"),
        ({"cell": "rnn"}, "cell"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_impossible_configs_raise_value_error_naming_the_field(overrides, field):
    kwargs = dict(input_size=10, num_units=5, k=2, hidden_size=6)
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=field):
        RIMs(**kwargs)


def test_bad_input_shapes_raise_value_error():
    m = make_rims("lstm")
    with pytest.raises(ValueError, match="D=10"):
        m(torch.randn(3, 2, 9), m.initial_state(2))
    with pytest.raises(ValueError, match="episode_starts"):
        m(torch.randn(3, 2, 10), m.initial_state(2), torch.zeros(2, 3, dtype=torch.bool))


def test_training_changes_only_through_used_paths():
    """A short optimisation on a toy target lowers the loss: gradients reach every parameter."""
    m = make_rims("gru", k=3)
    m.train()
    x = torch.randn(6, 8, 10)
    target = torch.randn(6, 8, m.output_size)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out, _, _ = m(x, m.initial_state(8))
        loss = (out - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "elements, heads, fuse",  # fuse: fuse_input_gates_max; sets of more than 4 read the values
    [(1, 1, 4), (2, 2, 4), (6, 1, 4), (3, 2, 4), (1, 1, 0)],
)
@pytest.mark.parametrize("with_starts", [False, True])
@pytest.mark.parametrize("comm_gate", [True, False])
def test_manual_backward_equals_autograd_float64(
    cell, elements, heads, fuse, with_starts, comm_gate
):
    """The hand-written backward (policies.rims_grad) gives autograd's gradients for every
    parameter, the input and the initial state, through the outputs, the final state and the
    null attention (which --selection-balance trains), on both input paths."""
    torch.manual_seed(3)
    x = torch.randn(7, 3, elements, 10, dtype=torch.float64)
    starts = torch.zeros(7, 3, dtype=torch.bool)
    if with_starts:  # t=0 too: the first step's reset takes all gradient from its row of h0
        starts[3, 1] = starts[5, 0] = starts[0, 2] = True
    grads, outs = [], []
    for manual in (True, False):
        m = make_rims(cell, torch.float64, input_heads=heads, k=3, comm_gate=comm_gate,
                      fuse_input_gates_max=fuse).train()  # fmt: skip
        assert m._fuses_input_gates(elements) == (elements * heads <= fuse)
        m.dropout = 0.0
        m.manual_backward = manual
        xr = x.clone().requires_grad_()
        state = tuple(torch.randn_like(s).requires_grad_() for s in m.initial_state(3))
        out, final, info = m(xr, state, starts if with_starts else None)
        weights = torch.randn_like(out)
        null_weights = torch.randn_like(info.null_attention)
        loss = (out * weights).sum() + sum((f * f).sum() for f in final)
        loss = loss + (info.null_attention * null_weights).sum()
        loss.backward()
        outs.append((out.detach(), info.mask))
        grads.append([xr.grad, *(s.grad for s in state), *(p.grad for p in m.parameters())])
        if with_starts:
            assert all(not s.grad[2].any() and s.grad[:2].any() for s in state)
    assert torch.equal(outs[0][1], outs[1][1])
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-12)
    names = ["x", "h0", "c0"][: 1 + (2 if cell == "lstm" else 1)] + [
        n for n, _ in make_rims(cell, comm_gate=comm_gate).named_parameters()
    ]
    for name, a, b in zip(names, grads[0], grads[1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize(
    "cell, elements, heads, comm_gate, manual",
    [(c, e, h, True, True) for c in CELLS for e, h in [(1, 1), (2, 2), (6, 1)]]
    + [("lstm", 1, 1, False, True)]  # the linear communication output, compiled once
    + [("gru", 6, 1, True, False)],  # autograd through each compiled step
)
def test_compiled_steps_compute_the_same_function_float64(cell, elements, heads, comm_gate, manual):
    """compile_steps changes how each step runs, not what it computes: outputs, selection,
    final states and every gradient match the eager autograd run. The gradients come from the
    hand-written backward's compiled steps (on the fused path up to 4 elements x heads, on the
    values path for 6), or from autograd through each compiled step."""
    torch.manual_seed(4)
    x = torch.randn(6, 3, elements, 10, dtype=torch.float64)
    starts = torch.zeros(6, 3, dtype=torch.bool)
    starts[2, 1] = starts[4, 0] = starts[0, 2] = True
    runs = []
    for compiled in (True, False):
        m = make_rims(cell, torch.float64, input_heads=heads, k=3, compile_steps=compiled,
                      comm_gate=comm_gate)  # fmt: skip
        m.manual_backward = compiled and manual  # the eager reference: autograd
        xr = x.clone().requires_grad_()
        state = tuple(torch.randn_like(s).requires_grad_() for s in m.initial_state(3))
        out, final, info = m(xr, state, starts)
        loss = (out * torch.randn_like(out)).sum() + sum((f * f).sum() for f in final)
        loss = loss + (info.null_attention * torch.randn_like(info.null_attention)).sum()
        loss.backward()
        grads = [xr.grad, *(s.grad for s in state), *(p.grad for p in m.parameters())]
        runs.append((out.detach(), info.mask, [f.detach() for f in final], grads))
    (out_c, mask_c, final_c, grads_c), (out_e, mask_e, final_e, grads_e) = runs
    assert torch.equal(mask_c, mask_e) and mask_c.any() and not mask_c.all()
    torch.testing.assert_close(out_c, out_e, rtol=1e-12, atol=1e-12)
    for a, b in zip(final_c, final_e):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def bf16_runs(cell: str, elements: int, heads: int, k: int) -> list[tuple]:
    """Output, mask and gradients (input, then parameters) of three runs on the same data:
    float32, bf16_matmuls with the hand-written backward, bf16_matmuls with autograd."""
    torch.manual_seed(5)
    x = torch.randn(6, 3, elements, 10)
    weights = torch.randn(6, 3, 5 * 6)
    runs = []
    for bf16, manual in ((False, True), (True, True), (True, False)):
        m = make_rims(cell, input_heads=heads, k=k, bf16_matmuls=bf16).train()
        m.dropout, m.manual_backward = 0.0, manual
        xr = x.clone().requires_grad_()
        out, _, info = m(xr, m.initial_state(3))
        (out * weights).sum().backward()
        runs.append((out.detach(), info.mask, [xr.grad, *(p.grad for p in m.parameters())]))
    return runs


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("elements, heads", [(1, 1), (2, 2), (6, 1)])  # 6: the values path
def test_bf16_matmuls_stay_within_bfloat16_precision_of_float32(cell, elements, heads):
    """bf16_matmuls only rounds the large products' operands: outputs and the gradients of both
    backwards stay within bfloat16 precision of the float32 core's (all RIMs active, so a
    rounded score cannot flip the selection), and the products really use bfloat16."""
    x = torch.randn(2, 2, 1, 10)
    assert make_rims(bf16_matmuls=True)._prepare(x, None, True).gate_values.dtype == (
        torch.bfloat16
    )
    (ref_out, _, ref_grads), *bf16 = bf16_runs(cell, elements, heads, k=5)
    for out, _, grads in bf16:
        assert out.dtype == torch.float32
        assert 0 < relative_error(out, ref_out) < 5e-3  # rounded, but only that much
        for g, g_ref in zip(grads, ref_grads):
            assert g.dtype == torch.float32 and relative_error(g, g_ref) < 2e-2


@pytest.mark.parametrize("cell", CELLS)
def test_bf16_manual_backward_matches_autograd_within_bfloat16_precision(cell):
    """With a real selection (3 of 5 active) both bf16 paths select alike and their gradients
    agree to bfloat16 precision."""
    _, (out_m, mask_m, grads_m), (out_a, mask_a, grads_a) = bf16_runs(cell, 1, 1, k=3)
    assert torch.equal(mask_m, mask_a) and not mask_m.all()
    torch.testing.assert_close(out_m, out_a)
    for g_m, g_a in zip(grads_m, grads_a):
        assert relative_error(g_m, g_a) < 2e-2


def test_manual_backward_is_used_only_where_it_applies():
    m = make_rims("lstm", dropout=0.0).train()
    x = torch.randn(4, 2, 1, 10)
    state = list(m.initial_state(2))
    assert m._use_manual_backward(x, state)
    with torch.no_grad():
        assert not m._use_manual_backward(x, state)  # acting: nothing to save
    m.dropout = 0.1
    assert not m._use_manual_backward(x, state)
    m.eval()
    assert m._use_manual_backward(x, state)  # dropout is off in eval mode
    m.dropout, m.fuse_input_gates_max = 0.0, 0
    assert m._use_manual_backward(x, state)  # also where each step reads the values
    m.manual_backward = False
    assert not m._use_manual_backward(x, state)


@pytest.mark.parametrize("heads, elements", [(1, 1), (2, 2)])
def test_value_gate_gradients_skip_only_inactive_rows(heads, elements):
    """The products' gradients, with inactive rows skipped (CPU) or not (GPU), equal autograd's."""
    from policies.rims_grad import value_gate_grads

    torch.manual_seed(4)
    U, TB, dv, G = 5, 12, 6, 8
    values = torch.randn(TB * elements, heads, dv, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(U, heads * dv, G, dtype=torch.float64, requires_grad=True)
    read = torch.rand(U, TB, heads, elements, dtype=torch.float64)
    active = torch.rand(U, TB) < 0.6
    d_gx = torch.randn(U, TB, G, dtype=torch.float64) * active.unsqueeze(-1)
    # The forward: P[u,tb,h,n] = values[tb,n,h] @ W[u,h]; the step reads sum_{h,n} read * P.
    v = values.view(TB, elements, heads, dv)
    w = weight.view(U, heads, dv, G)
    products = torch.einsum("tnhd,uhdg->uthng", v, w)  # (U, TB, heads, N, G)
    gates = (read.unsqueeze(-1) * products).sum((2, 3))  # (U, TB, G)
    expected = torch.autograd.grad(gates, (values, weight), d_gx)
    for compact in (True, False):
        got = value_gate_grads(read, d_gx, values.detach(), weight.detach(), active, compact)
        torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-12)
        # bfloat16 values (RIMs.bf16_matmuls): gradients in the values' and the weight's dtypes,
        # within bfloat16 precision
        d_values, d_weight = value_gate_grads(read.float(), d_gx.float(),
                                              values.detach().bfloat16(), weight.detach().float(),
                                              active, compact)  # fmt: skip
        assert d_values.dtype == torch.bfloat16 and d_weight.dtype == torch.float32
        for g, e in ((d_values, expected[0]), (d_weight, expected[1])):
            assert ((g.double() - e).norm() / e.norm()).item() < 2e-2
