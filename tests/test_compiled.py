"""CompiledStep: torch.compile where it works, the eager function (after one warning) where not."""

from __future__ import annotations

import warnings

import pytest
import torch

from agents.config import TrainConfig
from agents.storage import obs_to_tensors
from agents.trainer import build_policy
from envs.factory import make_vector_env
from policies import rims as rims_module
from policies import rims_grad
from policies.compiled import CompiledStep
from policies.rims import RIMs


def affine(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x * scale + 1.0


def failing_compile(calls: list[str]):
    """A stand-in for torch.compile whose compiled function fails like a broken compiler."""

    def compile_(fn, **options):
        def compiled(*args):
            calls.append("compiled")
            raise torch._dynamo.exc.TorchDynamoException("CppCompileError: no C++ compiler")

        return compiled

    return compile_


def test_a_failed_compile_warns_once_and_runs_eagerly_from_then_on(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(torch, "compile", failing_compile(calls))
    step = CompiledStep(affine, "test step")
    x = torch.arange(3.0)
    with pytest.warns(RuntimeWarning, match="torch.compile failed for the test step.*eagerly"):
        first = step(x, 2.0)
    torch.testing.assert_close(first, affine(x, 2.0), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        torch.testing.assert_close(step(x, 3.0), affine(x, 3.0), rtol=0, atol=0)
    assert calls == ["compiled"] and step.failed  # the compiled function is not tried again


def test_a_compile_failing_on_a_later_call_falls_back_too(monkeypatch):
    """Dynamo compiles again for new shapes (acting, then learning), so a compile may fail on
    any call, not only the first: the fallback must work then too (an ``import torch._dynamo``
    inside ``__call__`` once made ``torch`` a local name, unbound on later calls)."""
    calls: list[str] = []

    def compile_(fn, **options):
        def compiled(*args):
            calls.append("compiled")
            if len(calls) == 2:  # the second shapes
                raise torch._dynamo.exc.TorchDynamoException("CppCompileError: out of disk")
            return fn(*args)

        return compiled

    monkeypatch.setattr(torch, "compile", compile_)
    step = CompiledStep(affine, "test step")
    torch.testing.assert_close(step(torch.ones(2), 2.0), torch.full((2,), 3.0))
    with pytest.warns(RuntimeWarning, match="torch.compile failed for the test step"):
        out = step(torch.ones(3), 2.0)
    torch.testing.assert_close(out, torch.full((3,), 3.0))
    assert calls == ["compiled", "compiled"] and step.failed


def test_torch_compile_itself_failing_falls_back_too(monkeypatch):
    def unsupported(fn, **options):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unsupported)
    step = CompiledStep(affine, "test step")
    with pytest.warns(RuntimeWarning, match="Dynamo is not supported"):
        out = step(torch.ones(2), 2.0)
    torch.testing.assert_close(out, torch.full((2,), 3.0))


def test_errors_of_the_function_itself_are_not_taken_for_compile_failures(monkeypatch):
    # "compiled" = the function itself
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)

    def bad_shapes(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("shapes do not match")

    step = CompiledStep(bad_shapes, "test step")
    with pytest.raises(ValueError, match="shapes do not match"):
        step(torch.ones(1))
    assert not step.failed


def test_rims_with_compile_failing_compute_exactly_the_eager_function(monkeypatch):
    """The eager fallback of compile_steps: same outputs, states and gradients, bit for bit."""
    calls: list[str] = []
    monkeypatch.setattr(torch, "compile", failing_compile(calls))
    # Fresh wrappers, so that the module-wide ones are not left failed for other tests.
    monkeypatch.setattr(rims_module, "_COMPILED_STEP", CompiledStep(RIMs._step_body, "step"))
    monkeypatch.setattr(
        rims_grad, "_COMPILED_STEP_BACKWARD", CompiledStep(rims_grad.step_backward, "backward")
    )
    torch.manual_seed(0)
    m = RIMs(10, num_units=5, k=2, hidden_size=6, input_key_size=8, dropout=0.0)
    x = torch.randn(5, 3, 10)
    results = []
    for compiled in (False, True):
        m.compile_steps = compiled
        m.zero_grad()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out, final, info = m(x, m.initial_state(3))
            out.sum().backward()
        # Each failed compile says so once; the eager pass says nothing.
        said = sorted(str(w.message).split(" (")[0] for w in caught)
        failed = ["torch.compile failed for the backward", "torch.compile failed for the step"]
        assert said == (failed if compiled else [])
        results.append((out, final, info.mask, [p.grad.clone() for p in m.parameters()]))
    # The forward's step and the backward's step each went to the compiler once, which failed.
    assert calls == ["compiled", "compiled"]
    (out_e, final_e, mask_e, grads_e), (out_c, final_c, mask_c, grads_c) = results
    assert torch.equal(out_e, out_c) and torch.equal(mask_e, mask_c)
    assert all(torch.equal(a, b) for a, b in zip(final_e, final_c))
    assert all(torch.equal(a, b) for a, b in zip(grads_e, grads_c))


def test_compiled_acting_step_equals_the_eager_one():
    """compile_act: the whole acting step (encoder, RIMs step, heads, action choice) compiled
    gives the eager step's actions, values, states and info, across episode starts."""
    envs = make_vector_env("rims/CueMemory-v0", 4)
    config = TrainConfig(env="rims/CueMemory-v0", num_envs=4, hidden_size=8, num_units=4, k=2,
                         feature_size=16, input_key_size=8, rims_compile=True)  # fmt: skip
    torch.manual_seed(0)
    policy = build_policy(config, envs.single_observation_space, envs.single_action_space).eval()
    assert policy.compile_act and policy.core.compile_steps
    obs, _ = envs.reset(seed=0)
    states = {flag: policy.initial_state(4) for flag in (True, False)}
    starts = torch.ones(4, dtype=torch.bool)
    for t in range(6):
        results = {}
        for flag in (True, False):
            policy.compile_act = policy.core.compile_steps = flag
            results[flag] = policy.act(obs_to_tensors(obs, torch.device("cpu")), states[flag],
                                       starts, deterministic=True)  # fmt: skip
            states[flag] = results[flag].state
        compiled, eager = results[True], results[False]
        assert torch.equal(compiled.actions, eager.actions)
        assert torch.equal(compiled.info.mask, eager.info.mask)
        torch.testing.assert_close(compiled.values, eager.values)
        torch.testing.assert_close(compiled.logprobs, eager.logprobs)
        for a, b in zip(compiled.state, eager.state):
            torch.testing.assert_close(a, b)
        obs, *_ = envs.step(eager.actions.numpy())
        starts = torch.tensor([t == 2, False, True, False])
    envs.close()
    # Sampled actions: valid, and the same for the same seed.
    policy.compile_act = True
    draws = []
    for _ in range(2):
        torch.manual_seed(5)
        o = obs_to_tensors(obs, torch.device("cpu"))
        draws.append(policy.act(o, policy.initial_state(4), torch.ones(4, dtype=torch.bool)))
    assert torch.equal(draws[0].actions, draws[1].actions)
    assert ((draws[0].actions >= 0) & (draws[0].actions < envs.single_action_space.n)).all()


def test_a_graph_break_falls_back_instead_of_splitting_the_step():
    """A step is compiled as one graph or not at all (a split step would lose most of the gain
    without saying so)."""

    def with_break(x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        torch._dynamo.graph_break()
        return y + 1

    step = CompiledStep(with_break, "test step")
    with pytest.warns(RuntimeWarning, match="torch.compile failed for the test step"):
        out = step(torch.ones(3))
    torch.testing.assert_close(out, torch.full((3,), 3.0))
    assert step.failed
