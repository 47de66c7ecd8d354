"""TF32 switches for float32 products on CUDA, set for a block and restored after.

PyTorch >= 2.9 sets TF32 per backend through ``fp32_precision`` (``"tf32"``, ``"ieee"``, or
``"none"``: follow the global setting); older versions have only ``allow_tf32``. Reading the older
switch after a caller set the newer one raises, so the newer one is used wherever it exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch


@contextmanager
def _tf32_switch(newer: Any, older: Any, enabled: bool) -> Iterator[None]:
    """Within the block, ``newer.fp32_precision`` is ``"tf32"`` or ``"ieee"`` where this
    PyTorch has it, else ``older.allow_tf32`` is ``enabled``; the value before is restored."""
    if newer is not None and hasattr(newer, "fp32_precision"):
        owner, name, value = newer, "fp32_precision", "tf32" if enabled else "ieee"
    else:
        owner, name, value = older, "allow_tf32", enabled
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


def tf32_matmuls(enabled: bool) -> AbstractContextManager[None]:
    """CUDA float32 matmuls (cuBLAS) may use TF32 tensor cores within the block when
    ``enabled``, and compute in full float32 when not. cuDNN's own switches are left as they
    are (PyTorch lets cuDNN's RNNs and convolutions use TF32 by default)."""
    matmul = torch.backends.cuda.matmul
    return _tf32_switch(matmul, matmul, enabled)


def tf32_cudnn_rnns(enabled: bool) -> AbstractContextManager[None]:
    """cuDNN RNNs (``nn.LSTM``, ``nn.GRU`` on CUDA) may use TF32 tensor cores for float32 within
    the block when ``enabled`` (PyTorch's default), and compute in full float32 when not."""
    return _tf32_switch(getattr(torch.backends.cudnn, "rnn", None), torch.backends.cudnn, enabled)
