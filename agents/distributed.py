"""Data-parallel training under ``torchrun``: each process runs its own envs and rollout; the
gradients of every minibatch are averaged over processes, so all hold the same parameters.

Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) everything here is a no-op.
"""

from __future__ import annotations

import importlib
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    collective_device: str = "cpu"  # where small collective tensors live (CUDA for NCCL)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run directory, logs, checkpoints and the progress bar."""
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group ``torchrun`` set up (NCCL on GPUs, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    collective = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        collective = f"cuda:{local_rank}"
    if not dist.is_initialized():
        # Imported before the group exists: torch._dynamo (which the first optimizer imports)
        # pulls in torch.distributed._shard, and importing that while a gloo group exists keeps
        # the group alive past destroy_process_group (torch 2.13). Its worker threads then free
        # the last all-reduce's tensors during interpreter exit, and the process aborts
        # ("terminate called without an active exception", SIGABRT) after training succeeded.
        importlib.import_module("torch._dynamo")

        # A rank that dies makes the others fail within the timeout instead of hanging forever.
        dist.init_process_group(backend, timeout=timedelta(minutes=10))
    return Distributed(rank, world_size, local_rank, collective)


def local_device(device: torch.device, world: Distributed) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if world.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


def broadcast_parameters(module: nn.Module, world: Distributed) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if world.enabled:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(
    module: nn.Module, world: Distributed, error: Exception | None = None
) -> None:
    """Replace each gradient by its mean over ranks (one all-reduce of a flat buffer). ``error``:
    this rank could not compute its gradients (an out-of-memory error, say). The same
    all-reduce tells every rank which ranks failed, so that they stop together, as in
    ``stop_together``: the lowest rank that failed raises its error, every other rank
    ``OtherRankStopped``. Without it the others waited in this all-reduce for the rank that
    had left (NCCL: until the 10-minute timeout) and then failed with a traceback of their own.
    Alone, ``error`` is raised as it is."""
    if not world.enabled:
        if error is not None:
            raise error
        return
    failed = error is not None
    if failed:  # free the failed pass's activations (its frames' locals) for the buffer below
        traceback.clear_frames(error.__traceback__)
    # Every rank sends the same layout: a slot for each parameter's gradient (zeros where this
    # rank has none, or failed), then one flag per rank.
    params = list(module.parameters())
    grads = [p.grad if p.grad is not None and not failed else torch.zeros_like(p) for p in params]
    flags = rank_flags(failed, world, grads[0].dtype, grads[0].device)
    # every grad (n,) and the (world_size,) flags -> one (n + world_size,) buffer
    flat = torch.cat([*(g.reshape(-1) for g in grads), flags])
    dist.all_reduce(flat)
    ranks_failed = flagged_ranks(flat[-world.world_size :])
    if ranks_failed:
        leave_together(ranks_failed, world, error)
    flat /= world.world_size
    offset = 0
    for p, g in zip(params, grads):
        if p.grad is not None:
            p.grad.copy_(flat[offset : offset + g.numel()].view_as(g))  # (n,) slice -> grad shape
        offset += g.numel()


def average_over_ranks(tensor: Tensor, world: Distributed) -> Tensor:
    """The mean of ``tensor`` over ranks (every rank must call it); itself when alone."""
    if not world.enabled:
        return tensor
    total = tensor.detach().to(world.collective_device, copy=True)
    dist.all_reduce(total)
    return (total / world.world_size).to(tensor.device)


def any_rank(flag: bool, world: Distributed) -> bool:
    """True if ``flag`` is true on any rank (every rank must call it)."""
    if not world.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=world.collective_device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def rank_flags(
    failed: bool,
    world: Distributed,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(world_size,)`` zeros with this rank's slot 1 where ``failed`` (on ``device``, else
    the collectives' device): summed over ranks by an all-reduce, it says which ranks failed."""
    device = world.collective_device if device is None else device
    flags = torch.zeros(world.world_size, dtype=dtype, device=device)
    flags[world.rank] = 1.0 if failed else 0.0
    return flags


def flagged_ranks(flags: Tensor) -> list[int]:
    """The ranks whose slot of the all-reduced ``rank_flags`` is set, in order."""
    return [rank for rank, flag in enumerate(flags.tolist()) if flag]


def failed_ranks(failed: bool, world: Distributed) -> list[int]:
    """The ranks on which ``failed`` is true, in order (every rank must call it)."""
    if not world.enabled:
        return [world.rank] if failed else []
    flags = rank_flags(failed, world)
    dist.all_reduce(flags)  # each rank fills its own slot of the (world_size,) flags
    return flagged_ranks(flags)


class OtherRankStopped(Exception):
    """Another rank stopped the job inside ``stop_together`` and says why; this one leaves with
    it, with nothing to report (``rims train`` exits 0 on it, so that torchrun names the rank
    that stopped as the job's cause)."""


def leave_together(failed: list[int], world: Distributed, error: Exception | None) -> NoReturn:
    """Stop every rank where ``failed`` (the ranks that failed, in order) is not empty: the
    lowest of them raises its own ``error``, every other rank ``OtherRankStopped``."""
    if error is not None and failed[0] == world.rank:
        raise error
    raise OtherRankStopped from None


@contextmanager
def stop_together(world: Distributed) -> Iterator[None]:
    """A block, run by every rank, that may fail on some ranks or on all: rank 0's writes (the
    run directory, the event file, checkpoints), one rank's envs, or what every rank finds (a
    corrupt checkpoint, a diverged loss, a signal). It must hold no collective after a point
    that can fail. The lowest rank that failed leaves the block with its error, as it would
    alone; every other rank raises ``OtherRankStopped``, so the job stops with one line from
    one rank. Without it the others ran on to their next collective, which the stopped rank
    never joins, and failed there with a traceback of their own (gloo: "Connection closed by
    peer"); and an error every rank met was printed once per rank."""
    if not world.enabled:
        yield
        return
    try:
        yield
    except Exception as err:
        failed = [world.rank]
        with suppress(RuntimeError):  # the other ranks may be gone already: this error counts
            failed = failed_ranks(True, world)
        leave_together(failed, world, err)  # a lower rank that failed here too says why
    failed = failed_ranks(False, world)
    if failed:
        leave_together(failed, world, None)


def gather_lists(values: list, world: Distributed) -> list:
    """Every rank's list, concatenated (every rank must call it)."""
    if not world.enabled:
        return list(values)
    parts: list = [None] * world.world_size
    dist.all_gather_object(parts, list(values))
    return [v for part in parts for v in part]


def parameters_identical(module: nn.Module, world: Distributed) -> bool:
    """True if every rank holds bit-identical parameters and buffers (e.g. the features'
    running mean); compares rank 0's to each."""
    if not world.enabled:
        return True
    tensors = [*module.parameters(), *module.buffers()]
    # float64 holds every float32, integer and bool value exactly: one buffer to compare.
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    flat = flat.to(world.collective_device)
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    return not any_rank(not torch.equal(flat, reference), world)


def shutdown(world: Distributed) -> None:
    """Leave the group once every rank is done with its collectives; this joins gloo's worker
    threads, so none is left to run during interpreter exit."""
    if world.enabled and dist.is_initialized():
        dist.destroy_process_group()
