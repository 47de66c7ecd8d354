"""CUDA graphs for a recurrent core: each input signature is captured once and replayed after.

A RIMs sequence is thousands of small kernels (some 30 per step forward and 60 backward); on a
GPU their launches, not their arithmetic, are the cost. On an H100, forward+backward over T=128
at B=64 took 182 ms eagerly, 35 ms replayed from a graph and 17 ms replayed with compiled steps
(bench/RESULTS.md). A CUDA graph records a function's launches once and replays them at once.

``SequenceGraphs`` wraps a core's eager ``run(x, state, episode_starts)``:
- A signature (shapes, dtypes, devices and ``requires_grad`` of the inputs, grad mode, train
  mode and the core's own speed settings) is captured on its first call, after warm-up calls on
  a side stream. Acting (T=1, no grad) gets a forward graph; learning gets a forward graph and a
  backward graph, which autograd replays through ``_Replay``.
- What the caller sees behaves like the eager call: outputs are fresh tensors (never the graph's
  buffers, which the next replay overwrites), and a backward that runs after another forward of
  its signature first replays its own forward again, so its gradients are its own. Parameters
  changed in place between a forward and its backward raise, as autograd does for any saved
  tensor.
- Inputs that are not CUDA tensors, a call inside another capture or inside ``torch.compile``
  tracing, and signatures past ``max_graphs`` run ``run`` eagerly: the CPU runs the eager code.
  A capture that fails (an op this torch cannot capture) warns once, and everything runs
  eagerly from then on.

The function captured must keep CUDA graphs' rules, as RIMs does on a GPU: static shapes per
signature, no host synchronisation, no Python branch on tensor values, and parameters that are
updated in place (optimizers do; a parameter replaced by another tensor makes its signatures
be captured again).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from policies.compiled import error_summary
from policies.core import CoreInfo, State

Run = Callable[[Tensor, State, Tensor | None], tuple[Tensor, State, CoreInfo]]
"""A core's eager forward: ``(x, state, episode_starts) -> (out, state, info)``."""

WARMUP_CALLS = 3
"""Eager calls on a side stream before a capture (lazy initialisation, compiling and library
handle creation must not happen inside the capture)."""


class Captured(Protocol):
    """One signature's replayable graphs and their static buffers.

    ``inputs`` are the user inputs ``(x, *state[, episode_starts])`` a forward replay reads,
    ``outputs`` the flat outputs it writes; ``grad_outputs`` (None for outputs without grad) are
    read and ``grad_inputs`` (one per input then per parameter, None where none is computed)
    written by a backward replay, which uses the activations of the latest forward replay."""

    inputs: tuple[Tensor, ...]
    params: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    spec: TreeSpec
    grad_outputs: tuple[Tensor | None, ...]
    grad_inputs: tuple[Tensor | None, ...]
    generation: int  # changes whenever the activations stop being the last forward's

    def replay_forward(self) -> None: ...

    def replay_backward(self) -> None: ...


Capture = Callable[[Callable[..., Any], tuple[Tensor, ...], tuple[Tensor, ...], bool], Captured]
"""``capture(fn, inputs, params, with_backward)``: graphs of ``fn(*inputs)`` (and of its
gradients with respect to the inputs and parameters that require grad)."""


class CudaCapture:
    """``Captured`` recorded with ``torch.cuda.graph``; the forward and backward graphs share one
    memory pool (captured in the order they replay)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        inputs: tuple[Tensor, ...],
        params: tuple[Tensor, ...],
        with_backward: bool,
    ) -> None:
        self.params = params
        self.inputs = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in inputs)
        surface = (*self.inputs, *params)
        wrt = tuple(t for t in surface if t.requires_grad)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with _quiet_stream_mismatch(), torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                leaves = tree_flatten(fn(*self.inputs))[0]
                if with_backward:
                    _gradients(leaves, wrt, lambda o: torch.ones_like(o))
        torch.cuda.current_stream().wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        self._forward = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._forward, pool=pool):
            result = fn(*self.inputs)
        leaves, self.spec = tree_flatten(result)
        self.outputs = tuple(leaves)
        self.grad_outputs = tuple(
            torch.empty_like(o) if with_backward and o.requires_grad else None for o in leaves
        )
        self._backward: torch.cuda.CUDAGraph | None = None
        grads: dict[int, Tensor] = {}
        if with_backward and any(g is not None for g in self.grad_outputs):
            self._backward = torch.cuda.CUDAGraph()
            given = iter(g for g in self.grad_outputs if g is not None)
            with _quiet_stream_mismatch(), torch.cuda.graph(self._backward, pool=pool):
                grads = _gradients(leaves, wrt, lambda o: next(given))
        self.grad_inputs = tuple(grads.get(id(t)) for t in surface)
        self.generation = 0

    def replay_forward(self) -> None:
        self._forward.replay()
        self.generation += 1

    def replay_backward(self) -> None:
        if self._backward is None:
            raise RuntimeError("this graph was captured without a backward")
        self._backward.replay()


@contextlib.contextmanager
def _quiet_stream_mismatch() -> Iterator[None]:
    """Silence autograd's warning that a parameter's gradient accumulator belongs to another
    stream: warm-up and capture differentiate on side streams by design, with
    ``autograd.grad``, which accumulates nothing into ``.grad``."""
    switch = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if switch is not None:
        switch(False)
    try:
        yield
    finally:
        if switch is not None:
            switch(True)


def _gradients(
    leaves: list[Tensor], wrt: tuple[Tensor, ...], grad_of: Callable[[Tensor], Tensor]
) -> dict[int, Tensor]:
    """Gradients of the leaves that require grad, weighted by ``grad_of(leaf)``, with respect to
    ``wrt``, keyed by ``id`` of the tensor in ``wrt`` (those without a gradient are left out)."""
    outs = [o for o in leaves if o.requires_grad]
    if not outs or not wrt:
        return {}
    grads = torch.autograd.grad(outs, wrt, [grad_of(o) for o in outs], allow_unused=True)
    return {id(t): g for t, g in zip(wrt, grads) if g is not None}


class _Replay(torch.autograd.Function):
    """A captured forward as one autograd node whose backward replays the captured backward."""

    @staticmethod
    def forward(ctx: Any, graphs: Captured, n_inputs: int, *surface: Tensor) -> tuple[Tensor, ...]:
        inputs = surface[:n_inputs]
        _replay_forward(graphs, inputs)
        ctx.graphs, ctx.generation = graphs, graphs.generation
        ctx.param_versions = [p._version for p in graphs.params]
        ctx.save_for_backward(*inputs)
        outputs = tuple(o.clone() for o in graphs.outputs)  # the next replay overwrites them
        ctx.mark_non_differentiable(*(o for o in outputs if not o.is_floating_point()))
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        graphs: Captured = ctx.graphs
        if [p._version for p in graphs.params] != ctx.param_versions:
            raise RuntimeError(
                "a parameter of a CUDA-graphed core was modified in place between its forward "
                "and its backward; call backward before the optimizer step"
            )
        if graphs.generation != ctx.generation:  # another forward replayed since: redo this one
            _replay_forward(graphs, ctx.saved_tensors)
        for static, grad in zip(graphs.grad_outputs, grads):
            if static is None:
                continue
            if grad is None:
                static.zero_()
            else:
                static.copy_(grad)
        graphs.replay_backward()
        # The backward replay may have reused the activations' memory for its own temporaries
        # (autograd frees saved tensors as it goes): a second backward of this call (with
        # retain_graph) must replay the forward again.
        graphs.generation += 1
        # Copies: the next backward replay overwrites the static gradients.
        return (None, None, *(None if g is None else g.clone() for g in graphs.grad_inputs))


def _replay_forward(graphs: Captured, inputs: tuple[Tensor, ...]) -> None:
    for static, given in zip(graphs.inputs, inputs):
        if static.data_ptr() != given.data_ptr():
            static.copy_(given)
    graphs.replay_forward()


class SequenceGraphs:
    """``run(x, state, episode_starts)`` replayed from CUDA graphs, one capture per signature.

    ``module`` owns the parameters ``run`` uses; ``settings`` returns whatever else changes the
    captured function (e.g. compiled steps on or off). ``capture`` records a signature (CUDA
    graphs; tests pass an emulation); ``max_graphs`` bounds the signatures kept, after which
    new ones run eagerly.
    """

    def __init__(
        self,
        run: Run,
        module: torch.nn.Module,
        settings: Callable[[], Hashable] = lambda: (),
        capture: Capture = CudaCapture,
        max_graphs: int = 16,
        applies: Callable[[Tensor], bool] | None = None,
    ) -> None:
        self.run, self.module, self.settings = run, module, settings
        self.capture, self.max_graphs = capture, max_graphs
        self.applies = applies or _cuda_and_not_capturing
        self.graphs: dict[Hashable, Captured] = {}
        self.failed = False  # a capture failed: everything runs eagerly
        self._warned = False

    def __call__(
        self, x: Tensor, state: State, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State, CoreInfo]:
        if not self.applies(x):
            return self.run(x, state, episode_starts)
        inputs = (x, *state) + (() if episode_starts is None else (episode_starts,))
        params = tuple(self.module.parameters())
        with_backward = torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, *params))
        key = (
            tuple((t.shape, t.dtype, t.device, t.requires_grad) for t in inputs),
            len(state),
            episode_starts is None,
            with_backward,
            self.module.training,
            self.settings(),
        )
        graphs = self.graphs.get(key)
        if graphs is not None and not _same_tensors(graphs.params, params):
            # A parameter was replaced by another tensor (not updated in place): the graph reads
            # the old one, so it is captured again.
            del self.graphs[key]
            graphs = None
        if graphs is None:
            if self.failed:
                return self.run(x, state, episode_starts)
            if len(self.graphs) >= self.max_graphs:
                self._warn_once(
                    f"{self.max_graphs} input signatures are captured as CUDA graphs already; "
                    "further ones run eagerly"
                )
                return self.run(x, state, episode_starts)
            n_state = len(state)

            def flat(x: Tensor, *rest: Tensor) -> tuple[Tensor, State, dict[str, Tensor]]:
                """``run`` with tensors in and tensors out: the info's fields that are None
                are left out (a pytree leaf must be a tensor here)."""
                starts = rest[n_state] if len(rest) > n_state else None
                out, new_state, info = self.run(x, tuple(rest[:n_state]), starts)
                fields = {k: v for k, v in vars(info).items() if v is not None}
                return out, new_state, fields

            try:
                graphs = self.capture(flat, inputs, params, with_backward)
            except RuntimeError as err:  # e.g. an op this torch cannot capture
                self.failed = True
                self._warn_once(
                    f"capturing a CUDA graph failed ({error_summary(err)}); the core runs "
                    "eagerly from now on"
                )
                return self.run(x, state, episode_starts)
            self.graphs[key] = graphs
        if with_backward:
            leaves = _Replay.apply(graphs, len(inputs), *inputs, *params)
        else:
            _replay_forward(graphs, inputs)
            leaves = tuple(o.clone() for o in graphs.outputs)  # the next replay overwrites them
        out, new_state, fields = tree_unflatten(list(leaves), graphs.spec)
        return out, tuple(new_state), CoreInfo(**fields)

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, RuntimeWarning, stacklevel=3)


def _same_tensors(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> bool:
    return len(a) == len(b) and all(u is v for u, v in zip(a, b))


def _cuda_and_not_capturing(x: Tensor) -> bool:
    """Graphs serve CUDA inputs outside any capture and outside ``torch.compile`` tracing."""
    return (
        x.is_cuda
        and not torch.compiler.is_compiling()
        and not torch.cuda.is_current_stream_capturing()
    )
