"""The PPO loss (a pure function) and one PPO update over a rollout (returns a stats record)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from agents.config import TrainConfig
from agents.sampler import SequenceBatch, sequence_minibatches
from agents.selection import balance_loss
from agents.storage import RolloutStorage
from policies.actor_critic import ActorCritic


@dataclass
class LossParts:
    """The total loss and its parts (scalar tensors)."""

    loss: Tensor
    policy_loss: Tensor
    value_loss: Tensor
    entropy: Tensor
    approx_kl: Tensor
    clipfrac: Tensor
    selection_balance: Tensor | None = None  # unweighted (--selection-balance), else None


def ppo_loss(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    entropy: Tensor,
    new_values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    clip_coef: float,
    vf_coef: float,
    ent_coef: float,
    clip_vloss: bool = True,
    norm_adv: bool = True,
    adv_std_floor: float = 0.0,
) -> LossParts:
    """Clipped-surrogate PPO loss (as CleanRL). Every input has the same shape (any).
    With ``norm_adv`` the advantages are centred and divided by max(their std, ``adv_std_floor``)
    (a floor of 0 is CleanRL's normalisation)."""
    log_ratio = new_logprobs - old_logprobs
    ratio = log_ratio.exp()
    if norm_adv:
        scale = advantages.std().clamp_min(adv_std_floor) + 1e-8
        advantages = (advantages - advantages.mean()) / scale
    policy_loss = torch.max(
        -advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)
    ).mean()
    value_error = (new_values - returns).pow(2)
    if clip_vloss:
        clipped = old_values + (new_values - old_values).clamp(-clip_coef, clip_coef)
        value_error = torch.max(value_error, (clipped - returns).pow(2))
    value_loss = 0.5 * value_error.mean()
    entropy = entropy.mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()  # Schulman's unbiased k3 estimator
        clipfrac = ((ratio - 1).abs() > clip_coef).float().mean()
    loss = policy_loss - ent_coef * entropy + vf_coef * value_loss
    return LossParts(loss, policy_loss, value_loss, entropy, approx_kl, clipfrac)


@dataclass
class UpdateStats:
    """Means over the minibatches of one update, as plain floats."""

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clipfrac: float
    grad_norm: float
    explained_variance: float
    epochs: int
    seconds: float = 0.0  # wall time of the update (its end syncs with the device)
    selection_balance: float | None = None  # the unweighted balance loss, where it is trained

    @property
    def finite(self) -> bool:
        """False if any loss part or the gradient norm was NaN or inf."""
        values = (self.policy_loss, self.value_loss, self.entropy, self.approx_kl, self.grad_norm)
        return all(math.isfinite(v) for v in values)


def minibatch_loss(policy: ActorCritic, batch: SequenceBatch, config: TrainConfig) -> LossParts:
    """Replay ``batch``'s sequences through the policy from their start states; PPO loss, plus
    ``config.selection_balance`` times the selection's balance loss where that is not 0."""
    out = policy(batch.obs, batch.initial_state, batch.episode_starts)
    dist = out.distribution
    parts = ppo_loss(
        new_logprobs=dist.log_prob(batch.actions),
        old_logprobs=batch.old_logprobs,
        advantages=batch.advantages,
        entropy=dist.entropy(),
        new_values=out.values,
        old_values=batch.old_values,
        returns=batch.returns,
        clip_coef=config.clip_coef,
        vf_coef=config.vf_coef,
        ent_coef=config.ent_coef,
        clip_vloss=config.clip_vloss,
        norm_adv=config.norm_adv,
        adv_std_floor=config.adv_std_floor,
    )
    if config.selection_balance:
        null = out.info.null_attention  # (T, B, U)
        if null is None or not null.requires_grad:  # a core that does not differentiate it
            raise RuntimeError("--selection-balance: the core's null attention has no gradient")
        balance = balance_loss(out.info.mask, null, config.k)
        parts.loss = parts.loss + config.selection_balance * balance
        parts.selection_balance = balance
    return parts


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """1 - Var[target - predicted] / Var[target] (nan when the target is constant)."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - predicted).var() / var)


def ppo_update(
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    storage: RolloutStorage,
    advantages: Tensor,
    returns: Tensor,
    config: TrainConfig,
    generator: torch.Generator | None = None,
    after_backward: Callable[[Exception | None], None] | None = None,
    mean_over_ranks: Callable[[Tensor], Tensor] | None = None,
) -> UpdateStats:
    """``update_epochs`` passes over the rollout in minibatches of whole sequences.
    ``after_backward`` runs between each backward and the clip/step (e.g. averaging gradients
    over data-parallel ranks); where the loss or its backward raised, it runs with the error
    first (to stop the other ranks with this one), then the error is raised. ``mean_over_ranks``
    averages an epoch's approximate KL over data-parallel ranks before ``target_kl`` is
    checked: every rank must stop after the same epoch, or one rank's next gradient all-reduce
    meets another's next collective."""
    started = time.perf_counter()
    policy.train()
    sums = torch.zeros(7, device=advantages.device)
    count = 0
    epochs = 0
    for _ in range(config.update_epochs):
        epochs += 1
        kls = []
        for batch in sequence_minibatches(
            storage, advantages, returns, config.num_minibatches, generator
        ):
            optimizer.zero_grad(set_to_none=True)
            try:
                parts = minibatch_loss(policy, batch, config)
                parts.loss.backward()
            except Exception as err:
                if after_backward is not None:
                    after_backward(err)
                raise
            if after_backward is not None:
                after_backward(None)
            grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            balance = parts.selection_balance
            detached = (
                parts.policy_loss, parts.value_loss, parts.entropy, parts.approx_kl,
                parts.clipfrac, grad_norm, grad_norm.new_zeros(()) if balance is None else balance,
            )  # fmt: skip
            sums += torch.stack([p.detach().float() for p in detached])
            count += 1
            kls.append(parts.approx_kl)
        if config.target_kl is not None:
            kl = torch.stack(kls).mean()  # this rank's minibatches: () scalar
            if mean_over_ranks is not None:
                kl = mean_over_ranks(kl)
            if kl > config.target_kl:
                break
    *means, balance = (sums / count).tolist()  # one host sync per update
    variance = explained_variance(storage.values, returns)
    return UpdateStats(
        *means, explained_variance=variance, epochs=epochs, seconds=time.perf_counter() - started,
        selection_balance=balance if config.selection_balance else None,
    )  # fmt: skip
