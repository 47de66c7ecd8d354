"""``--centre-features``: the running mean, what it does to RIMs' selection, and training with it."""

from __future__ import annotations

import pytest
import torch

from agents.checkpoint import load_policy
from agents.sampler import sequence_minibatches
from agents.selection import switched_units
from policies.centring import MIN_SPREAD, FeatureCentring, FeatureMoments, mean_to_spread
from policies.rims import RIMs
from tests.test_agent import collect
from tests.test_cli import TINY, scalars
from train import main


def test_the_first_update_sets_the_mean_and_later_ones_average():
    centring = FeatureCentring(3, momentum=0.25)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(centring(x), x)  # nothing estimated yet: unchanged
    centring.update(FeatureMoments(torch.tensor([4.0, 0.0, -4.0]), torch.tensor(40.0)))
    assert bool(centring.estimated)
    torch.testing.assert_close(centring.mean, torch.tensor([4.0, 0.0, -4.0]))
    centring.update(FeatureMoments(torch.tensor([0.0, 8.0, 0.0]), torch.tensor(70.0)))
    torch.testing.assert_close(centring.mean, torch.tensor([3.0, 2.0, -3.0]))  # 0.75 a + 0.25 b
    torch.testing.assert_close(centring(x), torch.tensor([[-2.0, 0.0, 6.0]]))
    assert not hasattr(centring, "scale")  # plain centring keeps only the mean
    with pytest.raises(ValueError, match="shape"):
        centring.update(FeatureMoments(torch.zeros(4), torch.tensor(1.0)))
    with pytest.raises(ValueError, match="momentum"):
        FeatureCentring(3, momentum=0.0)


def test_keeping_the_size_gives_centred_features_the_raw_ones_mean_size():
    x = torch.tensor([[3.0, 4.0], [3.0, -4.0]])  # each of length 5; mean (3, 0)
    centring = FeatureCentring(2, momentum=0.5, keep_size=True)
    torch.testing.assert_close(centring(x), x)  # nothing estimated yet: unchanged
    centring.update(FeatureMoments(x.mean(0), x.square().sum(1).mean()))
    # E|x|^2 = 25, |m|^2 = 9: the centred (0, +-4) are scaled by sqrt(25 / 16) to length 5.
    torch.testing.assert_close(centring.scale, torch.tensor(1.25))
    torch.testing.assert_close(centring(x), torch.tensor([[0.0, 5.0], [0.0, -5.0]]))
    # |m| = 3 against a deviation of 4 (what training logs as features/mean_to_spread).
    assert mean_to_spread(FeatureMoments(x.mean(0), x.square().sum(1).mean())) == pytest.approx(
        0.75
    )
    # Later rollouts move both moments a step of 0.5, and the factor comes from the averages.
    centring.update(FeatureMoments(torch.tensor([1.0, 0.0]), torch.tensor(5.0)))
    torch.testing.assert_close(centring.mean, torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(centring.scale, torch.tensor((15.0 / 11.0) ** 0.5))
    # Features that do not vary: the factor stops at 1 / sqrt(MIN_SPREAD).
    still = FeatureCentring(2, keep_size=True)
    still.update(FeatureMoments(torch.tensor([3.0, 4.0]), torch.tensor(25.0)))
    torch.testing.assert_close(still.scale, torch.tensor(MIN_SPREAD**-0.5))
    zero = FeatureCentring(2, keep_size=True)
    zero.update(FeatureMoments(torch.zeros(2), torch.tensor(0.0)))
    torch.testing.assert_close(zero.scale, torch.tensor(1.0))


def switched(core: RIMs, inputs: torch.Tensor) -> list[int]:
    """The units whose selection switches over a batch of first steps ``(1, B, D)``."""
    batch = inputs.shape[1]
    start = torch.ones(1, batch, dtype=torch.bool)
    _, _, info = core(inputs, core.initial_state(batch), start)
    return switched_units(info.mask[0].float().mean(0).tolist())  # (B, U) -> rates (U,)


def test_centring_frees_a_selection_that_a_shared_part_holds_fixed():
    """Inputs with a large shared part add the same term to each RIM's score on every step, so
    only RIMs whose shared terms nearly tie can swap; without it every RIM wins sometimes."""
    raw_total = 0
    for seed in range(5):
        torch.manual_seed(seed)
        core = RIMs(16, num_units=6, k=3, hidden_size=8, input_key_size=8)
        x = 10.0 * torch.rand(16) + 0.3 * torch.randn(1, 512, 16)  # (1, 512, 16): 512 inputs

        centring = FeatureCentring(16)
        centring.update(FeatureMoments(x.mean((0, 1)), x.square().sum(-1).mean()))
        assert switched(core, centring(x)) == list(range(6))
        raw_total += len(switched(core, x))
    assert raw_total <= 15  # of 30: at most half


@pytest.mark.parametrize("spatial", [False, True])
def test_the_mean_feature_is_the_encoders_over_every_observation_and_element(spatial):
    config, policy, storage, *_ = collect(
        "rims", env="MiniGrid-DoorKey-5x5-v0", rims_spatial=spatial, centre_features=True
    )
    with torch.no_grad():
        features = policy.encoder(storage.obs)  # (T, B, F) or (T, B, N, F)
    rows = features.reshape(-1, features.shape[-1])  # -> (T*B or T*B*N, F)
    moments = policy.feature_moments(storage.obs, chunk=7)
    torch.testing.assert_close(moments.mean, rows.mean(0))
    torch.testing.assert_close(moments.mean_square, rows.square().sum(1).mean())
    assert rows.abs().sum() > 0


@pytest.mark.parametrize("keep_size", [False, True])
def test_the_ratio_is_one_before_the_first_update_with_centred_features(keep_size):
    """Acting and learning subtract the same mean, so PPO's first ratio stays 1."""

    def set_mean(policy):
        mean = torch.rand(policy.centring.mean.shape) + 0.5
        policy.centring.update(FeatureMoments(mean, 2.0 * mean.square().sum()))

    config, policy, storage, adv, ret, _ = collect(
        "rims", env="MiniGrid-DoorKey-5x5-v0", centre_features=True, centre_keep_size=keep_size,
        prepare=set_mean,
    )  # fmt: skip
    assert not keep_size or float(policy.centring.scale) == pytest.approx(2**0.5)
    policy.train()
    for batch in sequence_minibatches(storage, adv, ret, config.num_minibatches):
        out = policy(batch.obs, batch.initial_state, batch.episode_starts)
        new = out.distribution.log_prob(batch.actions)
        torch.testing.assert_close(new, batch.old_logprobs, rtol=1e-5, atol=1e-5)
    # The mean mattered: without it the same observations give other log-probabilities.
    policy.centring = None
    out = policy(batch.obs, batch.initial_state, batch.episode_starts)
    assert not torch.allclose(out.distribution.log_prob(batch.actions), batch.old_logprobs)


def test_training_estimates_the_mean_and_saves_it(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--total-steps", "64", "--run-dir", str(run), "--centre-features", *TINY]
    assert main(argv) == 0
    policy = load_policy(run / "checkpoints" / "latest.pt").policy
    assert policy.spec.centre_features and bool(policy.centring.estimated)
    first = load_policy(run / "checkpoints" / "step_000000000032.pt").policy
    # Each update moves the mean: the second checkpoint's differs from the first's.
    assert not torch.equal(policy.centring.mean, first.centring.mean)
    assert main(["train", "--run-dir", str(run), "--resume", "--total-steps", "96",
                 "--no-progress"]) == 0  # fmt: skip
    resumed = load_policy(run / "checkpoints" / "latest.pt").policy
    assert resumed.spec.centre_features and not torch.equal(
        resumed.centring.mean, policy.centring.mean
    )
    assert main(["eval", str(run), "--episodes", "2"]) == 0
    # Each update logs how long the rollout's mean feature is against the features' spread.
    tags = scalars(run)
    assert [e.step for e in tags["features/mean_to_spread"]] == [32, 64, 96]
    assert all(e.value > 0 for e in tags["features/mean_to_spread"])
    assert "features/size_factor" not in tags  # only with --centre-keep-size


def test_training_with_the_size_kept_estimates_the_factor_and_resumes_it(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--total-steps", "64", "--run-dir", str(run), "--centre-features",
            "--centre-keep-size", *TINY]  # fmt: skip
    assert main(argv) == 0
    policy = load_policy(run / "checkpoints" / "latest.pt").policy
    centring = policy.centring
    assert policy.spec.centre_keep_size and bool(centring.estimated)
    # The factor is the one its own running moments give, and it enlarges: centring shrank them.
    torch.testing.assert_close(
        centring.scale,
        (centring.mean_square / (centring.mean_square - centring.mean.square().sum())).sqrt(),
    )
    assert float(centring.scale) > 1.0
    logged = scalars(run)["features/size_factor"]
    assert [e.step for e in logged] == [32, 64]
    assert logged[-1].value == pytest.approx(float(centring.scale))
    assert main(["train", "--run-dir", str(run), "--resume", "--total-steps", "96",
                 "--no-progress"]) == 0  # fmt: skip
    resumed = load_policy(run / "checkpoints" / "latest.pt").policy.centring
    assert not torch.equal(resumed.mean_square, centring.mean_square)
    assert main(["eval", str(run), "--episodes", "2"]) == 0
