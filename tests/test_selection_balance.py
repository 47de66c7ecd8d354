"""``--selection-balance``: the Switch Transformer's load-balancing loss on RIMs' top-k selection."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from agents.ppo import minibatch_loss
from agents.sampler import sequence_minibatches
from agents.selection import balance_loss
from tests.test_agent import collect
from tests.test_cli import TINY, scalars
from train import main


def test_balance_loss_by_hand():
    """U=3, k=1, two steps: unit 0 active at the first, unit 1 at the second."""
    null = torch.tensor([[0.2, 0.5, 0.8], [0.6, 0.4, 0.5]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, False], [False, True, False]])
    loss = balance_loss(mask, null, k=1)
    # f = (1/2, 1/2, 0); attention shares (0.8, 0.5, 0.2)/1.5 and (0.4, 0.6, 0.5)/1.5, whose
    # means are (0.4, 11/30, 7/30): 3 * (0.5 * 0.4 + 0.5 * 11/30) = 1.15
    torch.testing.assert_close(loss, torch.tensor(1.15, dtype=torch.float64))
    loss.backward()
    # dL/d(1 - null[t, v]) = (U / T) * (f_v - sum_u f_u share[t, u]) / sum_u (1 - null[t, u]):
    # at the first step sum_u f_u share = 0.5 * (0.8 + 0.5) / 1.5 = 13/30
    first = [-(0.5 - 13 / 30), -(0.5 - 13 / 30), 13 / 30]  # d/dnull = -d/d(1 - null)
    second = [-(0.5 - 0.5 * 1.0 / 1.5), -(0.5 - 0.5 * 1.0 / 1.5), 0.5 * 1.0 / 1.5]
    torch.testing.assert_close(null.grad, torch.tensor([first, second], dtype=torch.float64))
    # The unit active most gets less attention, the idle one more, as the loss falls.
    assert null.grad[0, 0] < 0 < null.grad[0, 2]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_balance_loss_is_one_where_every_rim_attends_alike(k):
    torch.manual_seed(0)
    mask = torch.zeros(5, 7, 4, dtype=torch.bool)
    mask[..., :k] = True  # a fixed selection, the worst balance
    null = torch.full((5, 7, 4), 0.3)
    torch.testing.assert_close(balance_loss(mask, null, k), torch.tensor(1.0))
    # ... and above 1 where the ones always chosen attend most.
    null[..., :k] = 0.1
    assert balance_loss(mask, null, k) > 1


def test_the_minibatch_loss_adds_the_weighted_balance_and_its_gradient_reaches_the_attention():
    config, policy, storage, adv, ret, _ = collect("rims", selection_balance=0.1)
    assert policy.core.manual_backward  # the hand-written backward differentiates the null
    policy.train()
    plain = dataclasses.replace(config, selection_balance=0.0)
    for batch in sequence_minibatches(storage, adv, ret, config.num_minibatches):
        with_balance = minibatch_loss(policy, batch, config)
        without = minibatch_loss(policy, batch, plain)
        assert without.selection_balance is None
        balance = with_balance.selection_balance
        assert balance is not None and balance.item() > 0
        torch.testing.assert_close(with_balance.loss, without.loss + 0.1 * balance)
        # The input attention's key projection and the RIMs' query weights get its gradient.
        key, state = torch.autograd.grad(balance, [policy.core.input_key, policy.core.state_weight])
        assert key.abs().sum() > 0 and state.abs().sum() > 0


def test_the_balance_gradient_of_the_hand_written_backward_is_autograds():
    """The whole minibatch loss, differentiated through the core's hand-written backward and
    through autograd, gives every parameter the same gradient (float32 rounding apart)."""
    config, policy, storage, adv, ret, _ = collect("rims", selection_balance=1.0)
    policy.train()
    batch = next(iter(sequence_minibatches(storage, adv, ret, config.num_minibatches)))
    grads = []
    for manual in (True, False):
        policy.core.manual_backward = manual
        parts = minibatch_loss(policy, batch, config)
        assert parts.selection_balance is not None
        grads.append(torch.autograd.grad(parts.loss, list(policy.parameters()), allow_unused=True))
    names = [name for name, _ in policy.named_parameters()]
    for name, a, b in zip(names, *grads):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_a_core_whose_null_attention_has_no_gradient_is_refused(monkeypatch):
    """A core that hands back its null attention without a gradient (a core of one's own)
    would drop the balance loss's gradient silently; the loss raises instead."""
    config, policy, storage, adv, ret, _ = collect("rims", selection_balance=0.1)
    forward = policy.core.forward

    def detached(*args, **kwargs):
        out, state, info = forward(*args, **kwargs)
        return out, state, dataclasses.replace(info, null_attention=info.null_attention.detach())

    monkeypatch.setattr(policy.core, "forward", detached)
    policy.train()
    batch = next(iter(sequence_minibatches(storage, adv, ret, config.num_minibatches)))
    with pytest.raises(RuntimeError, match="null attention has no gradient"):
        minibatch_loss(policy, batch, config)


def test_training_logs_the_balance_loss_only_where_it_is_trained(tmp_path):
    run, plain = tmp_path / "balanced", tmp_path / "plain"
    args = ["train", "--total-steps", "64", *TINY]
    assert main([*args, "--run-dir", str(run), "--selection-balance", "0.1"]) == 0
    assert main([*args, "--run-dir", str(plain)]) == 0
    logged = scalars(run)["losses/selection_balance"]
    assert [e.step for e in logged] == [32, 64] and all(e.value > 0 for e in logged)
    assert "losses/selection_balance" not in scalars(plain)
