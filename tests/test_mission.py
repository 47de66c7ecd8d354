"""Minigrid's mission text: word indices, the fixed vocabulary, the shift, the encoder, the flag."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from minigrid.core.constants import COLOR_TO_IDX

from agents.config import resolve_config
from agents.sampler import sequence_minibatches
from envs.factory import make_env
from envs.mission import (
    INDEX,
    MAX_WORDS,
    NUM_TOKENS,
    PAD,
    UNKNOWN,
    VOCABULARY,
    missions_vary,
    tokenize,
    words,
)
from envs.shifts import COLOR_PERMUTATION, COLOR_WORD_PERMUTATION
from policies.actor_critic import ActorCritic
from policies.encoders import MissionEncoder
from policies.spec import PolicySpec
from tests.test_agent import collect
from tests.test_cli import TINY, exit_code
from train import main

FETCH, DOORKEY = "MiniGrid-Fetch-5x5-N2-v0", "MiniGrid-DoorKey-5x5-v0"


def test_tokenize_pads_marks_unknown_words_and_cuts_long_missions():
    tokens = tokenize("Get a blue key!")
    assert tokens.shape == (MAX_WORDS,) and tokens.dtype == np.int64
    assert list(tokens[:4]) == [INDEX["get"], INDEX["a"], INDEX["blue"], INDEX["key"]]
    assert (tokens[4:] == PAD).all()
    assert tokenize("go to the zebra")[3] == UNKNOWN
    long = tokenize(" ".join(["red"] * (MAX_WORDS + 5)))
    assert (long == INDEX["red"]).all()
    assert len(set(VOCABULARY)) == len(VOCABULARY)  # one index per word
    assert max(INDEX.values()) < NUM_TOKENS  # every index fits the policy's embedding


def test_the_vocabulary_covers_every_registered_minigrid_mission():
    # The vocabulary is fixed (a checkpoint stores none): a word that minigrid's missions use
    # and the vocabulary lacks would read as UNKNOWN. Three episodes of every id.
    missing: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ids minigrid keeps for old runs
        for env_id in [i for i in gym.registry if i.startswith(("MiniGrid-", "BabyAI-"))]:
            env = gym.make(env_id)
            try:
                env.reset(seed=0)
            except FileNotFoundError:  # the WFC ids need pattern files this wheel may lack
                env.close()
                continue
            for seed in range(3):
                mission = env.reset(seed=seed)[0]["mission"]
                missing.update({w: env_id for w in words(mission) if w not in INDEX})
                assert len(words(mission)) <= MAX_WORDS, (env_id, mission)
            env.close()
    assert missing == {}


def test_missions_vary_tells_fetch_from_doorkey():
    assert missions_vary(FETCH) and not missions_vary(DOORKEY)


def test_the_env_gives_the_mission_only_where_asked():
    env = make_env(FETCH, mission=True)
    obs, _ = env.reset(seed=0)
    text = env.unwrapped.mission
    assert np.array_equal(obs["mission"], tokenize(text))
    assert env.observation_space["mission"].contains(obs["mission"])
    assert "mission" not in make_env(FETCH).reset(seed=0)[0]


def test_color_permutation_renames_the_missions_colour_words_as_the_views():
    names = sorted(COLOR_TO_IDX, key=COLOR_TO_IDX.get)
    for c, name in enumerate(names):  # colour c is shown as COLOR_PERMUTATION[c]: so is its word
        assert COLOR_WORD_PERMUTATION[INDEX[name]] == INDEX[names[COLOR_PERMUTATION[c]]]
    others = [INDEX[w] for w in VOCABULARY if w not in COLOR_TO_IDX] + [PAD, UNKNOWN]
    assert (COLOR_WORD_PERMUTATION[others] == others).all()
    plain = make_env(FETCH, mission=True).reset(seed=0)[0]["mission"]
    shifted = make_env(FETCH, shifts=[("colors", "permute")], mission=True).reset(seed=0)[0]
    assert np.array_equal(shifted["mission"], COLOR_WORD_PERMUTATION[plain])
    assert not np.array_equal(shifted["mission"], plain)  # Fetch names a colour


@pytest.mark.parametrize("spatial", [False, True])
def test_the_policy_reads_the_mission_and_its_word_order(spatial):
    torch.manual_seed(0)
    env = make_env(FETCH, mission=True)
    obs, _ = env.reset(seed=0)
    policy = ActorCritic(env.observation_space, 3, PolicySpec(hidden_size=8, spatial=spatial))

    def features(text: str) -> torch.Tensor:
        batch = {k: torch.as_tensor(np.asarray(v))[None, None] for k, v in obs.items()}
        batch["mission"] = torch.as_tensor(tokenize(text))[None, None]  # (1, 1, MAX_WORDS)
        return policy.encoder(batch)

    one = features("put the red ball next to the blue key")
    assert not torch.allclose(one, features("put the blue key next to the red ball"))  # order
    assert not torch.allclose(one, features("put the red ball next to the green key"))
    assert torch.equal(one, features("put the red ball next to the blue key"))
    assert not policy.encoder.mission.embedding.weight[PAD].any()  # padding reads as nothing


def test_the_mission_encoder_is_a_convolution_over_word_embeddings():
    # Small batches are encoded row by row, large ones once per distinct mission: both must be
    # the masked, max-pooled convolution itself.
    torch.manual_seed(0)
    encoder = MissionEncoder(NUM_TOKENS).double()
    texts = ["get a blue key", "put the red ball next to the blue key", "", "zebra " * 50]
    for rows in (len(texts), 25 * len(texts)):  # below and above distinct_above
        assert (rows > MissionEncoder.distinct_above) == (rows == 100)
        tokens = torch.as_tensor(np.stack([tokenize(t) for t in texts * (rows // len(texts))]))
        embedded = encoder.embedding(tokens).transpose(1, 2)  # (N, L, E) -> (N, E, L)
        windows = torch.relu(encoder.conv(embedded))  # (N, size, L)
        expected = (windows * (tokens != PAD).unsqueeze(1)).amax(dim=-1)
        assert torch.allclose(encoder(tokens), expected, rtol=1e-12, atol=1e-12)
        assert not encoder(tokens)[2].any()  # an empty mission reads as nothing
        grad = torch.autograd.grad(encoder(tokens).sum(), encoder.conv.weight)[0]
        assert torch.allclose(grad, torch.autograd.grad(expected.sum(), encoder.conv.weight)[0])


def test_ratio_is_one_before_the_first_update_with_the_mission():
    # Acting encodes each env's mission (4 rows); a training minibatch (2 envs x 48 steps = 96
    # rows) encodes each distinct mission once: the log-probs must still agree.
    config, policy, storage, adv, ret, _ = collect("rims", env=FETCH, num_steps=48, mission=True)
    assert "mission" in storage.obs and storage.episode_starts[1:].any()
    for batch in sequence_minibatches(storage, adv, ret, config.num_minibatches):
        assert batch.obs["mission"].flatten(0, 1).shape[0] > MissionEncoder.distinct_above
        out = policy(batch.obs, batch.initial_state, batch.episode_starts)
        new = out.distribution.log_prob(batch.actions)
        torch.testing.assert_close(new, batch.old_logprobs, rtol=1e-5, atol=1e-5)


def test_a_policy_learns_to_act_on_the_missions_colour_whatever_the_phrasing():
    # The whole path, words -> encoder -> core -> actor, carries what a mission names: trained
    # by cross-entropy to answer each mission's colour (the view fixed), a RIMs policy gets
    # every one of Fetch's five phrasings x six colours x three objects right.
    torch.manual_seed(0)
    env = make_env(FETCH, mission=True)
    obs, _ = env.reset(seed=0)
    colors = sorted(COLOR_TO_IDX, key=COLOR_TO_IDX.get)
    phrasings = ("get a {}", "go get a {}", "fetch a {}", "go fetch a {}", "you must fetch a {}")
    texts, labels = [], []
    for phrase in phrasings:
        for c, color in enumerate(colors):
            for thing in ("key", "ball", "box"):
                texts.append(phrase.format(f"{color} {thing}"))
                labels.append(c)
    n = len(texts)
    batch = {k: torch.as_tensor(np.asarray(v))[None, None].expand(1, n, *np.shape(v))
             for k, v in obs.items()}  # fmt: skip
    batch["mission"] = torch.as_tensor(np.stack([tokenize(t) for t in texts]))[None]  # (1,n,L)
    target = torch.tensor(labels)
    policy = ActorCritic(env.observation_space, len(colors), PolicySpec(hidden_size=8))
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    starts = torch.ones(1, n, dtype=torch.bool)
    for _ in range(300):
        logits = policy(batch, policy.initial_state(n), starts).logits[0]  # (1, n, A) -> (n, A)
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (logits.argmax(-1) == target).all(), loss.item()


def test_mission_is_read_by_default_where_it_varies_and_saved_resolved(tmp_path, capsys):
    assert resolve_config({"env": FETCH}).mission is True
    assert resolve_config({"env": DOORKEY}).mission is False  # the default run is unchanged
    assert resolve_config({"env": FETCH, "mission": False}).mission is False
    assert resolve_config({"env": "CartPole-v1"}).mission is False
    run = tmp_path / "fetch"
    assert main(["train", "--env", FETCH, "--total-steps", "32", "--run-dir", str(run), *TINY]) == 0
    assert json.loads((run / "config.json").read_text())["mission"] is True
    # Evaluation and recording rebuild the env with the mission, on other Minigrid envs too.
    assert main(["eval", str(run), "--episodes", "2", "--shift", "colors=permute"]) == 0
    assert main(["eval", str(run), "--env", DOORKEY, "--episodes", "2"]) == 0
    assert main(["record", str(run), "--out", str(tmp_path / "f.gif"), "--max-steps", "2"]) == 0
    # What is learned cannot change on resume.
    resume = ["train", "--resume", "--run-dir", str(run), "--total-steps", "64", "--no-mission"]
    capsys.readouterr()
    assert exit_code(resume) == 2
    assert "mission" in capsys.readouterr().err
    assert exit_code(["train", "--env", "CartPole-v1", "--mission"]) == 2
    assert "--mission reads Minigrid's mission text" in capsys.readouterr().err
