"""Networks: recurrent cores (RIMs, LSTM, GRU, feed-forward), encoders, heads, actor-critic.

The networks are imported on first use (``from policies import RIMs``), not with the package:
``policies.spec`` holds what the command line checks, without torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policies.core import CoreInfo, RecurrentCore, State
    from policies.rims import RIMs
    from policies.rnn import FeedForwardCore, GRUCore, LSTMCore

_MODULE_OF = {
    "CoreInfo": "policies.core",
    "RecurrentCore": "policies.core",
    "State": "policies.core",
    "RIMs": "policies.rims",
    "FeedForwardCore": "policies.rnn",
    "GRUCore": "policies.rnn",
    "LSTMCore": "policies.rnn",
}
__all__ = ["CoreInfo", "FeedForwardCore", "GRUCore", "LSTMCore", "RIMs", "RecurrentCore", "State"]


def __getattr__(name: str) -> Any:
    """``policies.RIMs`` and the others, imported from their module the first time."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'policies' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # the next lookup finds it without this function
    return value
