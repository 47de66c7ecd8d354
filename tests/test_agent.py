"""The agent end to end on small rollouts: one forward path, sequence sampling, episode resets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from agents.config import TrainConfig
from agents.gae import compute_gae
from agents.ppo import minibatch_loss, ppo_update
from agents.rollout import RolloutCollector
from agents.sampler import sequence_minibatches
from agents.storage import RolloutStorage
from agents.trainer import build_policy
from envs.factory import make_vector_env
from policies.actor_critic import ActorCritic

CORES = ["rims", "lstm", "gru"]


def collect(
    core: str,
    env: str = "rims/CueMemory-v0",
    bptt: int = 0,
    num_steps: int = 24,
    prepare: Callable[[ActorCritic], None] | None = None,
    **overrides,
):
    """A policy, its storage filled with one rollout, and the GAE of it. ``prepare`` is called
    on the policy before the rollout."""
    config = TrainConfig(
        env=env, core=core, num_envs=4, num_steps=num_steps, bptt=bptt, num_minibatches=2,
        hidden_size=8, num_units=4, k=2, feature_size=16, input_key_size=8, **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    envs = make_vector_env(env, config.num_envs, env_kwargs=config.env_kwargs())
    policy = build_policy(config, envs.single_observation_space, envs.single_action_space)
    if prepare is not None:
        prepare(policy)
    device = torch.device("cpu")
    storage = RolloutStorage(
        config.num_steps, config.num_envs, envs.single_observation_space,
        policy.initial_state(config.num_envs), config.sequence_length, device,
    )  # fmt: skip
    collector = RolloutCollector(envs, policy, storage, device, seed=3)
    last_values, stats = collector.collect()
    adv, ret = compute_gae(
        storage.rewards, storage.values, storage.terminated, storage.ended,
        storage.bootstrap_values, last_values, 0.99, 0.95,
    )  # fmt: skip
    envs.close()
    return config, policy, storage, adv, ret, stats


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("bptt", [0, 6])
def test_ratio_is_one_before_the_first_update(core, bptt):
    config, policy, storage, adv, ret, _ = collect(core, bptt=bptt)
    policy.train()  # learning mode; attention dropout is 0 in the PPO config
    assert storage.episode_starts[1:].any()  # the rollout crosses episode boundaries
    for batch in sequence_minibatches(storage, adv, ret, config.num_minibatches):
        out = policy(batch.obs, batch.initial_state, batch.episode_starts)
        new = out.distribution.log_prob(batch.actions)
        torch.testing.assert_close(new, batch.old_logprobs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.values, batch.old_values, rtol=1e-5, atol=1e-5)
        parts = minibatch_loss(policy, batch, config)
        assert parts.approx_kl.abs().item() < 1e-6 and parts.clipfrac.item() == 0.0


def test_compiled_rims_steps_keep_the_ratio_at_one_before_the_first_update():
    """--rims-compile: acting compiles single steps, learning the hand-written backward's
    forward and backward steps; both compute what the eager core does, so the first ratio is 1
    to float rounding."""
    config, policy, storage, adv, ret, _ = collect("rims", rims_compile=True)
    assert policy.core.compile_steps
    policy.train()
    for batch in sequence_minibatches(storage, adv, ret, config.num_minibatches):
        out = policy(batch.obs, batch.initial_state, batch.episode_starts)
        new = out.distribution.log_prob(batch.actions)
        torch.testing.assert_close(new, batch.old_logprobs, rtol=1e-5, atol=1e-5)
        parts = minibatch_loss(policy, batch, config)
        assert parts.approx_kl.abs().item() < 1e-6
        parts.loss.backward()  # through the compiled backward steps
        assert all(torch.isfinite(p.grad).all() for p in policy.core.parameters())


def test_bf16_matmuls_keep_the_ratio_near_one_before_the_first_update():
    """Acting (one step per call) and learning (whole sequences) round the bfloat16 products
    alike up to bfloat16 precision, so PPO's first ratio stays within it of 1."""
    config, policy, storage, adv, ret, _ = collect("rims", rims_bf16=True)
    assert policy.core.bf16_matmuls
    policy.train()
    for batch in sequence_minibatches(storage, adv, ret, config.num_minibatches):
        out = policy(batch.obs, batch.initial_state, batch.episode_starts)
        ratio = (out.distribution.log_prob(batch.actions) - batch.old_logprobs).exp()
        assert (ratio - 1).abs().max().item() < 2e-2
        torch.testing.assert_close(out.values, batch.old_values, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("bptt", [0, 4])
def test_minibatches_are_whole_env_sequences_with_their_start_states(bptt):
    config, policy, storage, adv, ret, _ = collect("rims", bptt=bptt, num_steps=16)
    L = config.sequence_length
    seen = []
    for batch in sequence_minibatches(storage, adv, ret, config.num_minibatches):
        for col, sid in enumerate(batch.sequence_ids.tolist()):
            chunk, env = divmod(sid, config.num_envs)
            steps = slice(chunk * L, (chunk + 1) * L)
            assert torch.equal(batch.actions[:, col], storage.actions[steps, env])
            assert torch.equal(batch.advantages[:, col], adv[steps, env])
            assert torch.equal(batch.obs["obs"][:, col], storage.obs["obs"][steps, env])
            for s, stored in zip(batch.initial_state, storage.start_states):
                assert torch.equal(s[col], stored[chunk, env])
            seen.append(sid)
    assert sorted(seen) == list(range(config.num_sequences))


@pytest.mark.parametrize("core", CORES)
def test_acting_resets_the_state_at_episode_starts(core):
    """Replaying an episode from a fresh state gives the log-probs recorded while acting: the
    state carried in from the previous episode did not leak into it."""
    _, policy, storage, *_ = collect(core)
    starts = storage.episode_starts
    env = 0
    t0 = int(starts[1:, env].nonzero()[0]) + 1  # first episode start after t=0
    obs = {k: v[t0:, env : env + 1] for k, v in storage.obs.items()}
    out = policy(obs, policy.initial_state(1), starts[t0:, env : env + 1])
    new = out.distribution.log_prob(storage.actions[t0:, env : env + 1])
    torch.testing.assert_close(new, storage.logprobs[t0:, env : env + 1], rtol=1e-5, atol=1e-5)
    # Replaying without the resets would change them (the state matters in this task).
    no_reset = torch.zeros_like(starts[t0:, env : env + 1])
    start_state = tuple(s[:1] for s in policy.initial_state(1))
    warm = policy(
        {k: v[:, env : env + 1] for k, v in storage.obs.items()},
        start_state, no_reset.new_zeros(storage.num_steps, 1),
    )  # fmt: skip
    leaked = warm.distribution.log_prob(storage.actions[:, env : env + 1])[t0:]
    assert not torch.allclose(leaked, new, atol=1e-6)


def test_truncated_episodes_are_bootstrapped_with_the_final_observation():
    # DoorKey-5x5 with max_steps=8: every episode of a random policy is truncated.
    from envs import factory

    config = TrainConfig(env="MiniGrid-DoorKey-5x5-v0", core="lstm", num_envs=2, num_steps=10,
                         num_minibatches=1, hidden_size=4, num_units=2, k=1)  # fmt: skip
    envs = factory.make_vector_env(config.env, 2, env_kwargs={"max_steps": 8})
    policy = ActorCritic(envs.single_observation_space, 7, config.policy_spec())
    storage = RolloutStorage(10, 2, envs.single_observation_space, policy.initial_state(2),
                             10, torch.device("cpu"))  # fmt: skip
    RolloutCollector(envs, policy, storage, torch.device("cpu"), seed=0).collect()
    envs.close()
    truncated = storage.ended & ~storage.terminated
    assert truncated[7].all() and not storage.terminated.any()
    assert (storage.bootstrap_values[7] != 0).all()
    assert (storage.bootstrap_values[~truncated] == 0).all()
    assert storage.episode_starts[8].all() and storage.episode_starts[0].all()


def test_rims_activity_is_reported():
    *_, stats = collect("rims")
    assert stats.active_fraction is not None and len(stats.active_fraction) == 4
    assert sum(stats.active_fraction) == pytest.approx(2.0)  # k=2 of 4 active at every step
    assert stats.last_masks.shape == (24, 4, 4)
    assert stats.episode_returns and all(r in (0.0, 1.0) for r in stats.episode_returns)


def test_minigrid_spatial_encoder_gives_one_element_per_view_cell():
    from gymnasium import spaces

    from envs.factory import make_env
    from policies.encoders import make_encoder

    env = make_env("MiniGrid-DoorKey-5x5-v0")
    obs, _ = env.reset(seed=0)
    encoder = make_encoder(env.observation_space, 16, spatial=True)
    batch = {k: torch.as_tensor(v)[None, None] for k, v in obs.items()}  # (1, 1, ...)
    elements = encoder(batch)
    assert elements.shape == (1, 1, 49, 16) and encoder.num_elements == 49
    # The agent's direction shifts every element by the same learned vector.
    turned = dict(batch, direction=(batch["direction"] + 1) % 4)
    shift = encoder(turned) - elements
    torch.testing.assert_close(shift, shift[:, :, :1].expand_as(shift))
    assert shift.abs().sum() > 0
    # The same cell vectors flattened into one (the control encoder for a core without sets).
    flat_cells = make_encoder(env.observation_space, 16, kind="minigrid-cells")
    assert flat_cells(batch).shape == (1, 1, 16)
    assert flat_cells.linear.in_features == 49 * 16 + 4
    # Not every observation space has cells: a flat vector has none.
    flat = spaces.Dict({"obs": spaces.Box(-1, 1, (4,))})
    with pytest.raises(ValueError, match="spatial"):
        make_encoder(flat, 16, spatial=True)
    with pytest.raises(ValueError, match="does not fit"):
        make_encoder(flat, 16, kind="minigrid-cells")
    env.close()


def test_minigrid_cells_encoder_reads_views_the_pooled_cnn_cannot():
    """The pooled CNN needs a 7 x 7 view; the cells encoder keeps the view's size, so it reads
    a 5 x 5 or a 3 x 3 view (``--shift view=5 --encoder minigrid-cells``)."""
    from envs.factory import make_env
    from policies.encoders import make_encoder

    for view in (5, 3):
        env = make_env("MiniGrid-DoorKey-5x5-v0", shifts=[("view", str(view))])
        obs, _ = env.reset(seed=0)
        env.close()
        with pytest.raises(ValueError, match="7 x 7 cells or more"):
            make_encoder(env.observation_space, 16)
        encoder = make_encoder(env.observation_space, 16, kind="minigrid-cells")
        batch = {k: torch.as_tensor(v)[None, None] for k, v in obs.items()}  # (1, 1, ...)
        assert encoder(batch).shape == (1, 1, 16)
        assert encoder.linear.in_features == view * view * 16 + 4


def test_minigrid_encoder_reads_each_code_as_one_channel():
    """The CNN sees a multi-hot per cell: one channel for each of the object, colour and state
    codes (offset into disjoint ranges), exactly what summed per-code one-hots give."""
    import torch.nn.functional as F

    from envs.factory import make_env
    from policies.encoders import make_encoder

    env = make_env("MiniGrid-DoorKey-5x5-v0")
    obs, _ = env.reset(seed=0)
    env.close()
    encoder = make_encoder(env.observation_space, 16)
    batch = {k: torch.as_tensor(v)[None, None] for k, v in obs.items()}  # (1, 1, ...)
    seen = []
    encoder.cnn.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    encoder(batch)
    codes = batch["image"].long() + encoder.offsets  # (1, 1, 7, 7, 3)
    expected = F.one_hot(codes, encoder.num_codes).sum(-2).float()  # (1, 1, 7, 7, 20)
    assert torch.equal(seen[0], expected.flatten(0, 1).permute(0, 3, 1, 2))
    assert seen[0].sum() == 3 * 49 and len(codes.unique()) > 3


@pytest.mark.parametrize(("ranks_kl", "epochs"), [(0.0, 3), (1.0, 1)])
def test_the_kl_stop_follows_the_mean_over_ranks(ranks_kl, epochs):
    """Each epoch's KL goes through ``mean_over_ranks`` before ``target_kl`` is checked, so that
    under torchrun every rank stops after the same epoch: the mean (here ``ranks_kl``, as if
    from the other ranks) decides, whatever this rank's own KL."""
    config, policy, storage, adv, ret, _ = collect("rims", update_epochs=3, target_kl=0.5)
    seen: list[float] = []

    def mean_over_ranks(kl: torch.Tensor) -> torch.Tensor:
        seen.append(float(kl))
        return torch.tensor(ranks_kl)

    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    stats = ppo_update(policy, optimizer, storage, adv, ret, config,
                       torch.Generator().manual_seed(0), mean_over_ranks=mean_over_ranks)  # fmt: skip
    assert stats.epochs == epochs and len(seen) == epochs
    assert all(0.0 <= kl < config.target_kl for kl in seen)  # its own KL would not stop it
