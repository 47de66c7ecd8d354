"""RIMs steps as Triton kernels (``RIMs.triton_steps``, ``--rims-triton``).

Without a GPU the kernels run only in Triton's interpreter, where Triton is installed (it is
not a dependency; the interpreter test skips without it). What runs everywhere: which
configurations the kernels serve, and the fallback to the usual steps, with one warning and
the same results, where they cannot run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from policies import RIMs, triton_steps
from policies.spec import triton_unsupported

SMALL = dict(input_size=16, num_units=6, k=4, hidden_size=12, input_key_size=8, comm_heads=2,
             comm_key_size=4, comm_value_size=8, dropout=0.0)  # fmt: skip


def test_the_kernels_say_which_configurations_they_do_not_serve():
    assert triton_unsupported(input_heads=1, dropout=0.0) is None
    assert "one input head, not 2" in triton_unsupported(input_heads=2, dropout=0.0)
    assert "no attention dropout, not 0.1" in triton_unsupported(input_heads=1, dropout=0.1)


def test_a_core_that_the_kernels_cannot_run_is_refused_when_built():
    with pytest.raises(ValueError, match="^triton_steps: the kernels implement one input head"):
        RIMs(**{**SMALL, "input_heads": 2}, triton_steps=True)
    # dropout is refused per call, in training only: evaluation runs without it
    assert RIMs(**{**SMALL, "dropout": 0.1}, triton_steps=True).triton_steps


def test_the_kernels_run_on_cuda_and_on_a_cpu_only_in_the_interpreter(monkeypatch):
    class Built:  # as if Triton were installed, the kernels built for a GPU or the interpreter
        INTERPRETED = False

    monkeypatch.setattr(triton_steps, "kernels", Built())
    assert triton_steps.unavailable(torch.device("cuda")) is None
    assert "TRITON_INTERPRET=1" in triton_steps.unavailable(torch.device("cpu"))
    monkeypatch.setattr(Built, "INTERPRETED", True)
    assert triton_steps.unavailable(torch.device("cpu")) is None
    assert "not meta" in triton_steps.unavailable(torch.device("meta"))
    monkeypatch.setattr(triton_steps, "kernels", None)
    assert triton_steps.unavailable(torch.device("cuda")) == "Triton is not installed"


def _train_step(core: RIMs, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A forward and backward over a short sequence with episode starts: the output, the
    final state (h, and c for an LSTM), the mask, and every gradient (parameters, input,
    initial state) of a loss that weighs the outputs, the final state and the null attention
    (which --selection-balance trains)."""
    gen = torch.Generator().manual_seed(seed)
    T, B = 5, 3
    x = torch.randn(T, B, core.input_size, generator=gen, dtype=torch.float64)
    x.requires_grad_(True)
    state = tuple((torch.randn(B, 6, 12, generator=gen, dtype=torch.float64) * 0.5)
                  .requires_grad_(True) for _ in core.initial_state(B))  # fmt: skip
    starts = torch.rand(T, B, generator=gen) < 0.3
    out, final, info = core(x, state, starts)
    weights = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    null_weights = torch.randn(info.null_attention.shape, generator=gen, dtype=torch.float64)
    loss = (out * weights).sum() + (final[-1] ** 2).sum()
    (loss + (info.null_attention * null_weights).sum()).backward()
    grads = [p.grad for p in core.parameters()] + [x.grad, *(s.grad for s in state)]
    return (out.detach(), *(s.detach() for s in final), info.mask, *grads)


def test_where_the_kernels_cannot_run_the_usual_steps_do_after_one_warning(monkeypatch):
    """Where the kernels cannot run (here: as if without Triton) --rims-triton falls back: the
    same values bit for bit, one warning that says why and what runs instead."""
    monkeypatch.setattr(triton_steps, "kernels", None)
    torch.manual_seed(0)
    core = RIMs(**SMALL).double()
    expected = _train_step(core)
    core.zero_grad()
    core.triton_steps = True
    with pytest.warns(RuntimeWarning, match="triton_steps: .*; running the eager steps instead"):
        got = _train_step(core)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    core.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: not again
        _train_step(core)


def test_steps_the_kernels_do_not_cover_fall_back_even_where_they_could_run(monkeypatch):
    """A set of input elements (--rims-spatial's input) and attention dropout in training
    are per-call conditions: those calls take the usual steps and say why."""
    monkeypatch.setattr(triton_steps, "unavailable", lambda device: None)
    ran = []
    monkeypatch.setattr(triton_steps, "step", lambda *args: ran.append(args))
    core = RIMs(**SMALL, triton_steps=True).double()
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64)  # (T, B, N=5 elements, D)
    with pytest.warns(RuntimeWarning, match="read one input element"):
        core(x, core.initial_state(3))
    dropping = RIMs(**{**SMALL, "dropout": 0.2}, triton_steps=True).double().train()
    with pytest.warns(RuntimeWarning, match="no attention dropout, not 0.2"):
        dropping(x[:, :, 0], dropping.initial_state(3))
    core.manual_backward = False  # autograd would record the step: not the kernels' job
    with pytest.warns(RuntimeWarning, match="autograd records this step"):
        core(x[:, :, 0], core.initial_state(3))
    assert not ran


INTERPRETED = textwrap.dedent(
    """
    import torch
    from policies import RIMs, triton_steps
    from tests.test_triton_steps import SMALL, _train_step

    calls = {"forward": 0, "backward": 0}
    for name in calls:
        fn = getattr(triton_steps, "step" if name == "forward" else "step_backward")
        def counted(*args, _fn=fn, _name=name):
            calls[_name] += 1
            return _fn(*args)
        setattr(triton_steps, "step" if name == "forward" else "step_backward", counted)
    # sizes that are powers of 2, sizes that pad to them (3 heads of 6 keys, 5 values), a GRU,
    # the linear communication output
    odd = {"comm_heads": 3, "comm_key_size": 6, "comm_value_size": 5}
    variants = ({}, odd, {"cell": "gru"}, {"comm_gate": False})
    for options in ({**SMALL, **variant} for variant in variants):
        torch.manual_seed(0)
        core = RIMs(**options).double()
        expected = _train_step(core)
        core.zero_grad()
        core.triton_steps = True
        got = _train_step(core)
        states = ["h", "c"] if core.cell == "lstm" else ["h"]
        names = ["out", *states, "mask"] + [n for n, _ in core.named_parameters()]
        names += ["d_x"] + [f"d_{n}0" for n in states]
        bad = [n for n, a, b in zip(names, got, expected)
               if not torch.allclose(a, b, rtol=1e-9, atol=1e-12)]
        with torch.no_grad():  # acting: one step, the null attention too
            x, state = torch.randn(1, 3, 16, dtype=torch.float64), core.initial_state(3)
            acted = core(x, state)
            core.triton_steps = False
            reference = core(x, state)
        acting = torch.allclose(acted[0], reference[0]) and torch.allclose(
            acted[2].null_attention, reference[2].null_attention)
        print(f"bad={bad} acting={acting} calls={calls['forward']},{calls['backward']}")
        calls.update(forward=0, backward=0)
    """
)


@pytest.mark.skipif(triton_steps.kernels is None, reason="needs Triton (its interpreter on a CPU)")
def test_rims_through_the_kernels_compute_the_same_function_in_the_interpreter():
    """A training call (forward and hand-written backward) and an acting step through the
    kernels equal the eager steps in float64: outputs, states, masks, every gradient; with
    communication sizes that are powers of 2 and with sizes the kernels pad; LSTM and GRU
    cells; the gated and the linear communication output. Triton picks its interpreter at
    import: a process of its own."""
    env = {**os.environ, triton_steps.INTERPRETER: "1"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # each: 5 forward steps in training and 1 acting; 5 backward steps
    assert done.stdout.strip().splitlines()[-4:] == ["bad=[] acting=True calls=6,5"] * 4


@pytest.mark.skipif(triton_steps.kernels is None, reason="needs Triton (its interpreter on a CPU)")
@pytest.mark.parametrize("cell, balance", [("lstm", "0"), ("gru", "0"), ("lstm", "0.1")])
def test_rims_train_through_the_kernels_learns_what_the_eager_steps_learn(tmp_path, cell, balance):
    """``rims train --rims-triton`` end to end in the interpreter (acting on 2 envs, training
    on 8-step chunks, episode starts, two updates), with a fallback made an error: every loss
    it logs equals the eager run's to float32 rounding; with ``--selection-balance`` too."""
    from agents.curves import read_curve

    tiny = ["--num-envs", "2", "--num-steps", "16", "--bptt", "8", "--num-minibatches", "2",
            "--update-epochs", "1", "--total-steps", "64", "--no-progress", "--cell", cell,
            "--selection-balance", balance]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    for name, flags, extra in (("kernels", ["--rims-triton"], {triton_steps.INTERPRETER: "1"}),
                               ("eager", [], {})):  # fmt: skip
        env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning", **extra}
        command = [sys.executable, str(root / "train.py"), "train", "--run-dir",
                   str(tmp_path / name), *tiny, *flags]  # fmt: skip
        done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    tags = ["losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/grad_norm"]
    tags += ["losses/selection_balance"] if balance != "0" else []
    for tag in tags:
        _, got = read_curve(tmp_path / "kernels", tag)
        _, expected = read_curve(tmp_path / "eager", tag)
        assert len(got) == len(expected) == 2, tag
        assert torch.allclose(torch.tensor(got), torch.tensor(expected), rtol=1e-3, atol=1e-6), tag


def _kernel_parameters() -> dict[str, list[str]]:
    """Each kernel's parameter names, read from ``policies/triton_kernels.py``'s source (the
    module itself needs Triton to import)."""
    import ast

    source = Path(triton_steps.__file__).with_name("triton_kernels.py").read_text()
    functions = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
    return {f.name: [a.arg for a in f.args.args] for f in functions
            if f.name in triton_steps.KERNEL_NAMES}  # fmt: skip


class _RecordedKernels:
    """Stands in for ``policies.triton_kernels``: each launch ``kernel[grid](*args, **kw)`` is
    recorded with its arguments by parameter name, and runs nothing."""

    def __init__(self, parameters: dict[str, list[str]]) -> None:
        self.parameters, self.launches = parameters, []

    def __getattr__(self, name: str):
        recorder = self

        class Launcher:
            def __getitem__(self, grid):
                def launch(*args, **options):
                    assert len(args) == len(recorder.parameters[name]), name
                    given = dict(zip(recorder.parameters[name], args))
                    recorder.launches.append((name, grid, given, options))

                return launch

        return Launcher()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_each_launch_gives_its_kernel_every_parameter_in_order(monkeypatch, cell):
    """Without Triton (as in CI) the launchers still run against the kernels' signatures: the
    argument count of every launch, the sizes and switches given, the mask's dtype and the
    warps of ``NUM_WARPS``."""
    parameters = _kernel_parameters()
    assert sorted(parameters) == sorted(triton_steps.KERNEL_NAMES)
    recorded = _RecordedKernels(parameters)
    monkeypatch.setattr(triton_steps, "kernels", recorded)
    monkeypatch.setitem(triton_steps.NUM_WARPS, "attention_kernel", 8)
    torch.manual_seed(0)
    core = RIMs(**{**SMALL, "cell": cell}).train()
    B = 3
    x = torch.randn(2, B, 1, SMALL["input_size"])
    with torch.no_grad():
        inp = core._prepare(x, torch.tensor([[True, False, True], [False, True, False]]), True)
        hs = [s.transpose(0, 1).contiguous() for s in core.initial_state(B)]
        keep = inp.keep[1]
        _, mask, _, _, saved = triton_steps.step(
            core, hs, inp.keys[1], inp.value_gates[:, 1], None, keep, inp, True
        )
        weights = (core.state_weight.transpose(1, 2), inp.comm_weight.transpose(1, 2),
                   core.comm_out.transpose(1, 2), None)  # fmt: skip
        dh = torch.zeros(6, B, 12)
        dc = dh.clone() if cell == "lstm" else None
        grads = triton_steps.step_backward(core, inp, saved, weights, None, dh, dh, dh, dc, None,
                                           None, inp.keys[1], inp.value_gates[:, 1], keep,
                                           torch.ones(B))  # fmt: skip
    names = [name for name, *_ in recorded.launches]
    assert names == list(triton_steps.KERNEL_NAMES)
    launches = {name: (grid, given, options) for name, grid, given, options in recorded.launches}
    for name, (grid, _, options) in launches.items():
        assert grid == (B,), name
        assert options == {"num_warps": triton_steps.NUM_WARPS[name]}, name
    assert launches["attention_kernel"][2] == {"num_warps": 8}
    G = (4 if cell == "lstm" else 3) * 12
    cell_args = launches["cell_kernel"][1]
    assert (cell_args["U"], cell_args["H"], cell_args["G"], cell_args["K"]) == (6, 12, G, 4)
    assert cell_args["LSTM"] == (cell == "lstm") and cell_args["HAS_KEEP"] is True
    assert (cell_args["UP"], cell_args["HP"], cell_args["DK"], cell_args["DKP"]) == (8, 16, 8, 8)
    assert cell_args["mask"].dtype == torch.bool and cell_args["mask"] is mask
    attention = launches["attention_kernel"][1]
    assert (attention["CH"], attention["CDK"], attention["CDV"]) == (2, 4, 8)
    assert launches["output_kernel"][1]["GATE"] is True
    assert launches["cell_grad_kernel"][1]["LSTM"] == (cell == "lstm")
    assert grads.d_hq.shape == (6, B, G + 8) and grads.d_gx.shape == (6, B, G)
    assert (grads.dc is None) == (cell == "gru")
