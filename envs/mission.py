"""Minigrid's mission text as a fixed-length array of word indices (``--mission``).

Fetch, GoToDoor, GoToObject, PutNear, UnlockPickup, LockedRoom and every BabyAI level draw a new
mission each episode ("get a blue key", "put the red ball next to the grey box"): a policy that
cannot read it can only guess the goal. The vocabulary is fixed here, so a checkpoint needs no
vocabulary of its own and an index never changes meaning. It holds every word of the missions of
all Minigrid and BabyAI ids registered by minigrid 3.0 (53 words, sampled over their resets;
the longest mission had 37 words). Index 0 pads, 1 is a word outside the vocabulary; words are
appended, never reordered, and the index space (``NUM_TOKENS``) is larger than needed, so that
appending one keeps the shape of a saved policy's embedding.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re

import numpy as np
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX

PAD, UNKNOWN = 0, 1
VOCABULARY = (
    "a", "after", "and", "at", "avoid", "ball", "behind", "blue", "box", "door", "end", "fetch",
    "find", "from", "front", "get", "go", "goal", "green", "grey", "hallway", "in", "key", "lava",
    "left", "matching", "must", "near", "next", "object", "of", "on", "open", "opening", "pick",
    "purple", "put", "reach", "red", "right", "room", "rooms", "square", "the", "then", "to",
    "traverse", "unlock", "up", "use", "yellow", "you", "your",
)  # fmt: skip
"""The known words; word ``VOCABULARY[i]`` has index ``i + 2``."""
INDEX = {word: i + 2 for i, word in enumerate(VOCABULARY)}
NUM_TOKENS = 128
"""Word indices a policy embeds: the padding, the unknown word, the vocabulary and room for 73
more words (a new word must not change the embedding's shape, or old checkpoints would not
load)."""
MAX_WORDS = 40
"""Words kept of a mission (the rest are cut): above the longest sampled, 37."""


def mission_space() -> spaces.Box:
    """The observation entry: ``(MAX_WORDS,)`` int64 word indices, padded with ``PAD``."""
    return spaces.Box(0, NUM_TOKENS - 1, (MAX_WORDS,), np.int64)


def words(text: str) -> list[str]:
    """Lower-case words of ``text``; punctuation is dropped."""
    return re.findall(r"[a-z]+", text.lower())


@functools.lru_cache(maxsize=4096)
def _indices(text: str) -> tuple[int, ...]:
    """The word indices of ``text``, padded: cached, since an env repeats its missions."""
    indices = [INDEX.get(word, UNKNOWN) for word in words(text)][:MAX_WORDS]
    return tuple(indices) + (PAD,) * (MAX_WORDS - len(indices))


def tokenize(text: str) -> np.ndarray:
    """``text`` -> ``(MAX_WORDS,)`` int64: each word's index (``UNKNOWN`` outside the
    vocabulary), then ``PAD``."""
    return np.array(_indices(text), dtype=np.int64)


def color_word_permutation(color_permutation: np.ndarray) -> np.ndarray:
    """``(NUM_TOKENS,)``: each word index mapped to itself, except a colour word, which becomes
    the word of the colour that ``color_permutation`` (colour index c -> shown colour index)
    shows it as."""
    names = sorted(COLOR_TO_IDX, key=COLOR_TO_IDX.get)  # in index order: red, green, ...
    table = np.arange(NUM_TOKENS)
    for c, name in enumerate(names):
        table[INDEX[name]] = INDEX[names[color_permutation[c]]]
    return table


@functools.cache
def missions_vary(env_id: str, resets: int = 16) -> bool:
    """Whether ``env_id``'s first ``resets`` episodes (seeds 0, 1, ...) have more than one
    mission: where they do, the policy needs to read it. An env that fails to build or reset
    counts as not varying (building it for training reports the failure)."""
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except Exception:
        return False
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # BabyAI prints its rejected layouts
            missions = {env.reset(seed=seed)[0]["mission"] for seed in range(resets)}
    except Exception:
        return False
    finally:
        env.close()
    return len(missions) > 1
