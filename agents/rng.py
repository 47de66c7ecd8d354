"""The global random generators (Python, NumPy, torch CPU and CUDA): seed, capture, restore.

Captured states hold only tensors, ints, floats and None, so they travel inside a checkpoint
that loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CUDA's too, when present).
    ``seed`` >= 0; NumPy's legacy generator takes it modulo 2**32 (it refuses larger ones)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_states() -> dict[str, Any]:
    """The global generators' states as checkpoint-safe values."""
    version, mt_state, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch_rng": torch.get_rng_state(),
        "python_rng": {
            "version": version,
            "state": torch.tensor(mt_state, dtype=torch.int64),  # 625 words < 2**32
            "gauss_next": gauss_next,
        },
        "numpy_rng": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),  # (624,) uint32 -> int64
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the global generators from ``capture_rng_states``' values; absent entries (older
    checkpoints, a CPU checkpoint on a GPU machine) leave their generator as it is."""
    if "torch_rng" in states:
        torch.set_rng_state(states["torch_rng"])
    if "python_rng" in states:
        py = states["python_rng"]
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    if "numpy_rng" in states:
        npr = states["numpy_rng"]
        keys = npr["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (npr["kind"], keys, npr["pos"], npr["has_gauss"], npr["cached_gaussian"])
        )
    cuda = states.get("cuda_rng")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
