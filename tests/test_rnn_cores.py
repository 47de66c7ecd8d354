"""LSTMCore / GRUCore / FeedForwardCore behind the core interface."""

from __future__ import annotations

import pytest
import torch

from policies.rnn import FeedForwardCore, GRUCore, LSTMCore, segment_bounds


@pytest.mark.parametrize("core_cls", [LSTMCore, GRUCore])
def test_segmented_sequence_equals_stepping_with_resets(core_cls):
    torch.manual_seed(0)
    core = core_cls(6, 9)
    x = torch.randn(12, 4, 6)
    starts = torch.zeros(12, 4, dtype=torch.bool)
    starts[0] = True
    starts[3, 1] = starts[7, 0] = starts[7, 2] = starts[11, 3] = True
    warm = tuple(torch.randn_like(s) for s in core.initial_state(4))
    out, final, info = core(x, warm, starts)
    assert out.shape == (12, 4, 9) and info.mask is None and info.null_attention is None

    state, outs = warm, []
    for t in range(12):
        # Manual reset, then one step with nothing to reset.
        state = tuple(torch.where(starts[t].view(4, 1), torch.zeros_like(s), s) for s in state)
        o, state, _ = core(x[t : t + 1], state)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs), out, rtol=1e-5, atol=1e-6)
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("core_cls", [LSTMCore, GRUCore])
def test_reset_does_not_leak_across_batch(core_cls):
    torch.manual_seed(0)
    core = core_cls(5, 7)
    x = torch.randn(6, 3, 5)
    plain, _, _ = core(x, core.initial_state(3))
    starts = torch.zeros(6, 3, dtype=torch.bool)
    starts[2, 0] = True
    out, _, _ = core(x, core.initial_state(3), starts)
    fresh, _, _ = core(x[2:, :1], core.initial_state(1))
    torch.testing.assert_close(out[2:, :1], fresh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[:, 1:], plain[:, 1:], rtol=1e-6, atol=1e-7)


def test_segment_bounds():
    starts = torch.zeros(6, 2, dtype=torch.bool)
    assert segment_bounds(None, 6) == [0, 6]
    assert segment_bounds(starts, 6) == [0, 6]
    starts[0, 0] = starts[2, 1] = starts[4, 0] = starts[4, 1] = True
    assert segment_bounds(starts, 6) == [0, 2, 4, 6]


def test_state_layout_and_feed_forward_core():
    lstm = LSTMCore(4, 8)
    h, c = lstm.initial_state(3)
    assert h.shape == c.shape == (3, 8) and lstm.output_size == 8
    (g,) = GRUCore(4, 8).initial_state(3)
    assert g.shape == (3, 8)
    ff = FeedForwardCore(4, 8)
    assert ff.initial_state(3) == ()
    x = torch.randn(5, 3, 4)
    out, state, _ = ff(x, (), torch.ones(5, 3, dtype=torch.bool))
    assert state == () and out.shape == (5, 3, 8)
    # Memoryless: each step depends only on its own input.
    torch.testing.assert_close(out[2:3], ff(x[2:3], ())[0])


@pytest.mark.parametrize("core_cls", [LSTMCore, GRUCore, FeedForwardCore])
def test_bad_sizes_raise(core_cls):
    with pytest.raises(ValueError, match="hidden_size"):
        core_cls(4, 0)
    core = core_cls(4, 3)
    with pytest.raises(ValueError, match="D=4"):
        core(torch.randn(2, 2, 5), core.initial_state(2))
