"""Networks: recurrent cores (RIMs, LSTM, GRU, feed-forward), encoders, heads, actor-critic."""

from policies.core import CoreInfo, RecurrentCore, State
from policies.rims import RIMs
from policies.rnn import FeedForwardCore, GRUCore, LSTMCore

__all__ = ["CoreInfo", "FeedForwardCore", "GRUCore", "LSTMCore", "RIMs", "RecurrentCore", "State"]
