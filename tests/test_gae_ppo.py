"""The maths: GAE by hand with terminations and truncations; the PPO loss by hand."""

from __future__ import annotations

import pytest
import torch

from agents.gae import compute_gae
from agents.ppo import ppo_loss


def hand_case():
    # env 0 terminates at t=1; env 1 is truncated at t=1 (bootstrap value 0.9 of its final obs).
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    values = torch.tensor([[0.5, 0.2], [0.4, 0.1], [0.3, 0.7]])
    terminated = torch.tensor([[False, False], [True, False], [False, False]])
    ended = torch.tensor([[False, False], [True, True], [False, False]])
    bootstrap = torch.tensor([[0.0, 0.0], [0.0, 0.9], [0.0, 0.0]])
    last = torch.tensor([0.6, 0.5])
    return rewards, values, terminated, ended, bootstrap, last


def test_gae_by_hand_with_termination_and_truncation():
    rewards, values, terminated, ended, bootstrap, last = hand_case()
    adv, ret = compute_gae(rewards, values, terminated, ended, bootstrap, last, 0.9, 0.8)
    # env 0: t2: 2 + .9*.6 - .3 = 2.24; t1 (terminal): 0 - .4 = -.4; t0: 1 + .9*.4 - .5 + .72*(-.4)
    # env 1: t2: 0 + .9*.5 - .7 = -.25; t1 (truncated, V(final)=.9): 1 + .81 - .1 = 1.71;
    #        t0: 0 + .9*.1 - .2 + .72*1.71
    expected = torch.tensor([[0.86 - 0.288, -0.11 + 0.72 * 1.71], [-0.4, 1.71], [2.24, -0.25]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_truncation_is_bootstrapped_not_terminal():
    rewards, values, terminated, ended, bootstrap, last = hand_case()
    adv_trunc, _ = compute_gae(rewards, values, terminated, ended, bootstrap, last, 0.9, 0.8)
    as_terminal = terminated | ended
    adv_term, _ = compute_gae(rewards, values, as_terminal, ended, bootstrap, last, 0.9, 0.8)
    assert adv_trunc[1, 1] == pytest.approx(1.71)
    assert adv_term[1, 1] == pytest.approx(0.9)  # 1 - 0.1, no bootstrap
    torch.testing.assert_close(adv_trunc[:, 0], adv_term[:, 0])  # env 0 unchanged


def test_gae_lambda_one_gives_discounted_returns():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.3], [0.2], [0.1]])
    no = torch.zeros(3, 1, dtype=torch.bool)
    _, ret = compute_gae(rewards, values, no, no, torch.zeros(3, 1), torch.tensor([4.0]), 0.5, 1.0)
    expected = torch.tensor(
        [[1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4], [2 + 0.5 * 3 + 0.25 * 4], [3 + 0.5 * 4]]
    )
    torch.testing.assert_close(ret, expected)


def test_ppo_loss_by_hand():
    old = torch.log(torch.tensor([0.5, 0.5]))
    new = torch.log(torch.tensor([0.8, 0.3]))  # ratios 1.6 (clipped to 1.2) and 0.6
    adv = torch.tensor([1.0, -1.0])
    values_new = torch.tensor([1.0, 0.0])
    values_old = torch.tensor([0.5, 0.5])
    returns = torch.tensor([2.0, 0.0])
    entropy = torch.tensor([0.7, 0.5])
    parts = ppo_loss(
        new, old, adv, entropy, values_new, values_old, returns,
        clip_coef=0.2, vf_coef=0.5, ent_coef=0.01, clip_vloss=True, norm_adv=False,
    )  # fmt: skip
    # policy: max(-1*1.6, -1*1.2) = -1.2; max(1*0.6, 1*0.8) = 0.8 -> mean -0.2
    assert parts.policy_loss.item() == pytest.approx(-0.2)
    # value: env0 unclipped (1-2)^2=1, clipped .7 -> (0.7-2)^2=1.69 -> 1.69;
    #        env1 unclipped 0, clipped 0.3 -> 0.09 -> 0.09; 0.5 * mean = 0.445
    assert parts.value_loss.item() == pytest.approx(0.445)
    assert parts.entropy.item() == pytest.approx(0.6)
    assert parts.clipfrac.item() == pytest.approx(1.0)
    assert parts.loss.item() == pytest.approx(-0.2 - 0.006 + 0.2225, rel=1e-5)
    # At ratio 1 the KL estimate is 0 and nothing is clipped.
    same = ppo_loss(old, old, adv, entropy, values_old, values_old, returns, 0.2, 0.5, 0.0)
    assert same.approx_kl.item() == 0.0 and same.clipfrac.item() == 0.0


def policy_gradient_norm(advantages: torch.Tensor, norm_adv: bool, floor: float = 0.0) -> float:
    """Norm of the PPO policy loss's gradient at the old policy (uniform over 7 actions)."""
    n = advantages.shape[0]
    logits = torch.zeros(n, 7, requires_grad=True)
    dist = torch.distributions.Categorical(logits=logits)
    actions = torch.arange(n) % 7
    logprobs = dist.log_prob(actions)
    zeros = torch.zeros(n)
    parts = ppo_loss(
        logprobs, logprobs.detach(), advantages, dist.entropy(), zeros, zeros, zeros,
        clip_coef=0.2, vf_coef=0.0, ent_coef=0.0, norm_adv=norm_adv, adv_std_floor=floor,
    )  # fmt: skip
    parts.policy_loss.backward()
    return logits.grad.norm().item()


def test_normalising_advantages_blows_value_noise_up_to_the_size_of_a_real_signal():
    """A rollout in which nothing succeeds has advantages that are only value noise (~1e-3).
    Normalised, that noise pulls the policy as hard as a real reward would (how DoorKey runs
    drift while nothing succeeds); unnormalised it barely moves it."""
    generator = torch.Generator().manual_seed(0)
    noise = 1e-3 * torch.randn(256, generator=generator)
    signal = torch.randn(256, generator=generator)
    raw_noise, raw_signal = policy_gradient_norm(noise, False), policy_gradient_norm(signal, False)
    assert raw_noise < 0.01 * raw_signal
    normed_noise = policy_gradient_norm(noise, True)
    normed_signal = policy_gradient_norm(signal, True)
    assert normed_noise == pytest.approx(normed_signal, rel=0.2)


def test_a_floor_on_the_advantage_scale_damps_noise_and_leaves_real_signals_normalised():
    """Divided by max(std, 0.02): noise of std 1e-3 pulls 20x less than when divided by its own
    std, while a minibatch with one success among noise (std above the floor) is normalised
    exactly as without the floor."""
    generator = torch.Generator().manual_seed(0)
    noise = 1e-3 * torch.randn(256, generator=generator)
    success = noise.clone()
    success[-20:] += 0.7  # one successful episode's last steps (GAE spreads its reward back)
    assert success.std() > 0.02

    floored = policy_gradient_norm(noise, True, floor=0.02)
    assert floored == pytest.approx(
        policy_gradient_norm(noise, True) * noise.std().item() / 0.02, rel=1e-4
    )
    assert policy_gradient_norm(success, True, floor=0.02) == policy_gradient_norm(success, True)


def test_a_floor_of_zero_is_cleanrls_normalisation():
    """The default floor gives (A - mean) / (std + 1e-8), as before the floor existed."""
    generator = torch.Generator().manual_seed(1)
    advantages = 3.0 * torch.randn(64, generator=generator) + 1.0
    old_logprobs = torch.randn(64, generator=generator)
    new_logprobs = old_logprobs + 0.05 * torch.randn(64, generator=generator)  # inside the clip
    zeros = torch.zeros(64)
    parts = ppo_loss(
        new_logprobs, old_logprobs, advantages, zeros, zeros, zeros, zeros,
        clip_coef=0.2, vf_coef=0.0, ent_coef=0.0, norm_adv=True,
    )  # fmt: skip
    normalised = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    expected = -(normalised * (new_logprobs - old_logprobs).exp()).mean()
    assert parts.policy_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts.policy_loss.item() != pytest.approx(
        -(advantages * (new_logprobs - old_logprobs).exp()).mean().item(), rel=0.1
    )
