"""CUDA-graph replay of a core (policies.graphs), checked on the CPU through an emulated capture.

``EmulatedCapture`` keeps the one property of CUDA graphs that can make replays go wrong: every
replay of a signature reads and writes the same static buffers, and a backward replay uses the
activations of the latest forward replay. ``SequenceGraphs`` must hide that: outputs and
gradients equal the eager ones in any call order. The capture itself (``torch.cuda.graph``) runs
in ``bench/cuda_check.py`` on a GPU.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._pytree import tree_flatten

from agents.config import resolve_config
from agents.curves import group_label
from agents.trainer import build_policy
from envs.factory import make_vector_env
from policies import RIMs
from policies.graphs import SequenceGraphs


class EmulatedCapture:
    """``Captured`` without a GPU: a replay reruns ``fn`` on the static inputs and overwrites the
    static outputs (forward) or static gradients (backward) in place."""

    def __init__(self, fn, inputs, params, with_backward: bool) -> None:
        self.fn, self.params, self.with_backward = fn, params, with_backward
        self.inputs = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in inputs)
        leaves, self.spec = tree_flatten(fn(*self.inputs))
        self.outputs = tuple(o.detach().clone() for o in leaves)
        self.grad_outputs = tuple(
            torch.zeros_like(o) if with_backward and o.requires_grad else None for o in leaves
        )
        surface = (*self.inputs, *params)
        self.grad_inputs = tuple(
            torch.zeros_like(t) if with_backward and t.requires_grad else None for t in surface
        )
        self.generation = 0
        self.live: list[torch.Tensor] = []

    def replay_forward(self) -> None:
        with torch.set_grad_enabled(self.with_backward):
            self.live = tree_flatten(self.fn(*self.inputs))[0]
        for static, new in zip(self.outputs, self.live):
            static.copy_(new.detach())
        self.generation += 1

    def replay_backward(self) -> None:
        pairs = [(o, g) for o, g in zip(self.live, self.grad_outputs) if g is not None]
        wrt = [t for t in (*self.inputs, *self.params) if t.requires_grad]
        grads = torch.autograd.grad(
            [o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True
        )
        given = iter(grads)
        for static in self.grad_inputs:
            if static is not None:
                grad = next(given)
                static.copy_(grad) if grad is not None else static.zero_()


def core_and_graphs(max_graphs: int = 16, **kwargs) -> tuple[RIMs, SequenceGraphs, list]:
    """A float64 RIMs core, its graphs through ``EmulatedCapture``, and the list of captures."""
    torch.manual_seed(0)
    options = dict(num_units=5, k=3, hidden_size=6, input_key_size=8, dropout=0.0) | kwargs
    core = RIMs(7, **options).double()
    captures: list[EmulatedCapture] = []

    def capture(*args):
        captures.append(EmulatedCapture(*args))
        return captures[-1]

    graphs = SequenceGraphs(
        core._run, core, core._graph_settings, capture, max_graphs, applies=lambda x: True
    )
    return core, graphs, captures


def inputs(
    seed: int, T: int = 6, B: int = 4, elements: int | None = None
) -> tuple[torch.Tensor, tuple, torch.Tensor]:
    """x ``(T, B, 7)``, or a set ``(T, B, elements, 7)``; states; episode starts."""
    g = torch.Generator().manual_seed(seed)
    shape = (T, B, 7) if elements is None else (T, B, elements, 7)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(B, 5, 6, generator=g, dtype=torch.float64) for _ in range(2))
    starts = torch.rand(T, B, generator=g) < 0.2
    return x, state, starts


def gradients(core: RIMs, x: torch.Tensor, loss: torch.Tensor) -> list[torch.Tensor]:
    """d loss / d (x, parameters), zeros where there is none."""
    wrt = [x, *core.parameters()]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]


def weighted(out: torch.Tensor, state: tuple) -> torch.Tensor:
    """A loss that weights every output and state entry differently."""
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return (out * w).sum() + sum((s * s).sum() for s in state)


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("elements", [None, 6])  # 6: a set, whose steps read the values
def test_replayed_forward_and_backward_equal_eager(cell, elements):
    core, graphs, captures = core_and_graphs(cell=cell)
    for seed in (1, 2, 3):  # the second and third calls replay the first capture
        x, state, starts = inputs(seed, elements=elements)
        state = state[: len(core.initial_state(1))]
        out, new, info = graphs(x, state, starts)
        eager_out, eager_new, eager_info = core._run(x, state, starts)
        assert_same(
            [out, *new, info.null_attention], [eager_out, *eager_new, eager_info.null_attention]
        )
        assert torch.equal(info.mask, eager_info.mask)
        assert_same(gradients(core, x, weighted(out, new)),
                    gradients(core, x, weighted(eager_out, eager_new)))  # fmt: skip
    assert len(captures) == 1


def test_a_backward_after_another_forward_gets_its_own_gradients():
    """Two forwards of one signature, then the first's backward: the first's outputs were not
    overwritten by the second replay and its gradients are its own (its forward is replayed
    again before the backward)."""
    core, graphs, captures = core_and_graphs()
    (x1, s1, st1), (x2, s2, st2) = inputs(1), inputs(2)
    out1, new1, _ = graphs(x1, s1, st1)
    kept = out1.detach().clone()
    out2, new2, _ = graphs(x2, s2, st2)
    assert torch.equal(out1, kept)
    eager1, eager_new1, _ = core._run(x1, s1, st1)
    eager2, eager_new2, _ = core._run(x2, s2, st2)
    assert_same(gradients(core, x1, weighted(out1, new1)),
                gradients(core, x1, weighted(eager1, eager_new1)))  # fmt: skip
    assert_same(gradients(core, x2, weighted(out2, new2)),
                gradients(core, x2, weighted(eager2, eager_new2)))  # fmt: skip
    # Both calls in one loss, the gradient accumulated over them, as two minibatches would.
    both = weighted(*graphs(x1, s1, st1)[:2]) + weighted(*graphs(x2, s2, st2)[:2])
    eager_both = weighted(*core._run(x1, s1, st1)[:2]) + weighted(*core._run(x2, s2, st2)[:2])
    x_grad, eager_x_grad = (torch.autograd.grad(loss, x1) for loss in (both, eager_both))
    assert_same(list(x_grad), list(eager_x_grad))
    assert len(captures) == 1


def test_a_second_backward_of_one_call_recomputes_its_activations():
    """backward twice through one call (retain_graph): the second replays the forward again,
    since the first backward replay may have reused the activations' memory."""
    core, graphs, _ = core_and_graphs()
    x, state, starts = inputs(1)
    loss = weighted(*graphs(x, state, starts)[:2])
    eager = weighted(*core._run(x, state, starts)[:2])
    first = torch.autograd.grad(loss, x, retain_graph=True)[0]
    second = torch.autograd.grad(loss, x)[0]
    expected = torch.autograd.grad(eager, x)[0]
    assert_same([first, second], [expected, expected])


def test_acting_steps_replay_one_graph_and_carry_the_state():
    """Acting: T=1 without grad, each step's state fed back, as a rollout does."""
    core, graphs, captures = core_and_graphs()
    core.eval()
    state = eager_state = core.initial_state(4, "cpu")
    state = eager_state = tuple(s.double() for s in state)
    kept = []
    with torch.no_grad():
        for seed in range(5):
            x, _, starts = inputs(seed, T=1)
            out, state, info = graphs(x, state, starts)
            eager_out, eager_state, eager_info = core._run(x, eager_state, starts)
            assert_same([out, *state], [eager_out, *eager_state])
            assert torch.equal(info.mask, eager_info.mask)
            kept.append((state[0], eager_state[0]))
    # Earlier states handed out are not overwritten by later replays.
    assert all(torch.equal(a, b) for a, b in kept)
    assert len(captures) == 1 and captures[0].with_backward is False


def test_each_signature_gets_its_own_capture_up_to_the_limit():
    core, graphs, captures = core_and_graphs(max_graphs=3)
    x, state, starts = inputs(1)
    graphs(x, state, starts)  # training
    graphs(x.detach(), state, starts)  # x without grad: still a backward (the parameters)
    with torch.no_grad():
        graphs(x, state, starts)  # no grad: forward only
    assert [c.with_backward for c in captures] == [True, True, False]
    graphs(x, state, starts)  # seen before: replayed
    assert len(captures) == 3
    core.manual_backward = False  # a setting that changes the recorded function
    with pytest.warns(RuntimeWarning, match="run eagerly"):  # a fourth, past the limit
        out, new, _ = graphs(x, state, starts)
    eager_out, eager_new, _ = core._run(x, state, starts)
    assert_same([out, *new], [eager_out, *eager_new])
    assert len(captures) == 3


def test_a_replaced_parameter_is_captured_again():
    """A parameter assigned a new tensor (not updated in place) is not the one the graph reads:
    the signature is captured again and the output follows the new weights."""
    core, graphs, captures = core_and_graphs()
    x, state, starts = inputs(1)
    graphs(x, state, starts)
    core.state_weight = torch.nn.Parameter(core.state_weight.detach() * 1.5)
    out, new, _ = graphs(x, state, starts)
    eager_out, eager_new, _ = core._run(x, state, starts)
    assert_same([out, *new], [eager_out, *eager_new])
    assert len(captures) == 2 and len(graphs.graphs) == 1


def test_a_parameter_changed_before_the_backward_raises():
    """The optimizer stepping between a forward and its backward would give gradients of other
    parameters; autograd raises for saved tensors changed in place, and so do the graphs."""
    core, graphs, _ = core_and_graphs()
    x, state, starts = inputs(1)
    out, new, _ = graphs(x, state, starts)
    with torch.no_grad():
        core.state_weight.add_(0.01)
    with pytest.raises(RuntimeError, match="modified in place"):
        weighted(out, new).backward()


def test_cuda_graphs_on_the_cpu_run_the_eager_core():
    """--rims-graphs on the CPU: the same values, bit for bit, and nothing captured."""
    torch.manual_seed(3)
    plain = RIMs(7, num_units=5, k=3, hidden_size=6, dropout=0.0)
    graphed = RIMs(7, num_units=5, k=3, hidden_size=6, dropout=0.0, cuda_graphs=True)
    graphed.load_state_dict(plain.state_dict())
    x = torch.randn(6, 4, 7)
    state = plain.initial_state(4)
    a, b = plain(x, state), graphed(x, state)
    assert torch.equal(a[0], b[0]) and all(torch.equal(u, v) for u, v in zip(a[1], b[1]))
    assert graphed._graphs is None


def test_rims_graphs_is_on_by_default_for_rims_only():
    """--rims-graphs (the default) switches a RIMs core's graphs on; other cores run as they
    are; --no-rims-graphs switches them off; --rims-compile still compiles the acting step
    (on the CPU, where no graph replays)."""
    base = dict(env="MiniGrid-Empty-5x5-v0", num_envs=2, num_steps=8, total_steps=16, bptt=0,
                num_minibatches=1)  # fmt: skip
    envs = make_vector_env(base["env"], 1)
    try:
        spaces = envs.single_observation_space, envs.single_action_space

        def policy(**given):
            return build_policy(resolve_config({**base, **given}), *spaces)

        assert resolve_config(base).rims_graphs
        assert policy().core.cuda_graphs
        assert not policy(rims_graphs=False).core.cuda_graphs
        assert not hasattr(policy(core="lstm").core, "cuda_graphs")
        compiled = policy(rims_compile=True)
        assert compiled.core.cuda_graphs and compiled.compile_act
        assert not policy().core.triton_steps
        kernels = policy(rims_triton=True)  # graphs replay the kernels too
        assert kernels.core.triton_steps and kernels.core.cuda_graphs
    finally:
        envs.close()


def test_a_failed_capture_warns_once_and_runs_eagerly():
    core, graphs, _ = core_and_graphs()
    attempts = []

    def failing(*args):
        attempts.append(args)
        raise RuntimeError("operation not permitted when stream is capturing")

    graphs.capture = failing
    x, state, starts = inputs(1)
    with pytest.warns(RuntimeWarning, match="capturing a CUDA graph failed"):
        out, new, _ = graphs(x, state, starts)
    eager_out, eager_new, _ = core._run(x, state, starts)
    assert_same([out, *new], [eager_out, *eager_new])
    with torch.no_grad():  # another signature: not tried again
        graphs(x, state, starts)
    assert len(attempts) == 1 and graphs.failed and not graphs.graphs


def test_rims_graphs_does_not_split_a_plot_group(tmp_path):
    """Runs saved before the flag existed and runs with it either way are seeds of one config
    in `rims plot` (the flag changes speed, not the function)."""
    labels = []
    for name, extra in (
        ("old", {}),
        ("on", {"rims_graphs": True}),
        ("off", {"rims_graphs": False}),
        ("compiled", {"rims_graphs": False, "rims_compile": True}),  # also speed only
        ("kernels", {"rims_triton": True}),  # and so is this
    ):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(
            json.dumps({"core": "rims", "env": "E", "seed": 1, **extra})
        )
        labels.append(group_label(run))
    assert len(set(labels)) == 1


@pytest.mark.parametrize("manual", [True, False])
def test_the_null_attentions_gradient_replays_as_eager(manual):
    """``--selection-balance`` differentiates the null attention (through the hand-written
    backward or autograd); a replayed backward passes that gradient on as eager does."""
    from agents.selection import balance_loss

    core, graphs, captures = core_and_graphs()
    core.manual_backward = manual
    for seed in (1, 2):  # the second call replays the first capture
        x, state, starts = inputs(seed)
        out, _, info = graphs(x, state, starts)
        eager_out, _, eager_info = core._run(x, state, starts)
        loss = balance_loss(info.mask, info.null_attention, core.k)
        eager_loss = balance_loss(eager_info.mask, eager_info.null_attention, core.k)
        grads = gradients(core, x, loss)
        assert any(g.abs().sum() > 0 for g in grads)
        assert_same(grads, gradients(core, x, eager_loss))
    assert len(captures) == 1
