"""Training steps/s of our recurrent PPO against sb3-contrib's RecurrentPPO, in one run.

Same env (MiniGrid-DoorKey-5x5-v0), same number of envs (8) and rollout length (128). sb3-contrib
runs its defaults (MlpLstmPolicy, 10 epochs of minibatches of 128 steps, i.e. 80 gradient steps
per rollout). Ours runs its default update (4 epochs x 4 minibatches = 16 gradient steps) and,
for an equal-work comparison, 10 epochs x 8 minibatches of one 128-step env column (80 gradient
steps, like sb3's). Both use our Minigrid view code (``envs.minigrid_view``), so the env costs the
same on both sides. Each figure is steps / seconds inside the training loop (start-up excluded).
Needs the dev extra (sb3-contrib).

    python bench/vs_sb3.py                  # 16384 steps per row
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import minigrid  # noqa: F401
import torch
from minigrid.wrappers import ImgObsWrapper

from agents.config import resolve_config
from agents.trainer import train
from envs.minigrid_view import install_fast_view

ENV = "MiniGrid-DoorKey-5x5-v0"


def sb3_steps_per_second(steps: int, seed: int, rims: bool = False) -> float:
    """sb3-contrib's RecurrentPPO with its MlpLstmPolicy, or with our RIMsPolicy (6 x 32, k=4,
    the same RIMs sizes as our trainer's default)."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger

    from policies.sb3 import RIMsPolicy

    def wrap(env: gym.Env) -> gym.Env:
        install_fast_view(env.unwrapped)  # the same Minigrid view code as ours: equal env cost
        return ImgObsWrapper(env)

    envs = make_vec_env(ENV, n_envs=8, seed=seed, wrapper_class=wrap)
    policy, kwargs = (RIMsPolicy, {"rims_kwargs": {"hidden_size": 32}}) if rims else (
        "MlpLstmPolicy", {})  # fmt: skip
    model = RecurrentPPO(policy, envs, n_steps=128, seed=seed, device="cpu", verbose=0,
                         policy_kwargs=kwargs)  # fmt: skip
    model.set_logger(Logger(folder=None, output_formats=[]))  # no SB3-* folder in /tmp
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    return model.num_timesteps / (time.perf_counter() - start)


def ours_steps_per_second(steps: int, seed: int, core: str, root: Path, **extra) -> float:
    name = f"{core}_" + "_".join(f"{k}{v}" for k, v in extra.items())
    config = resolve_config(
        dict(env=ENV, core=core, seed=seed, total_steps=steps, num_envs=8, num_steps=128,
             run_dir=str(root / name), overwrite=True, progress=False, **extra)
    )  # fmt: skip
    result = train(config)
    return result.global_step / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    gym.make(ENV).close()
    # The runs only serve the timing: their folder goes when this object does (at exit).
    scratch = tempfile.TemporaryDirectory(prefix="vs_sb3_")
    root = Path(scratch.name)
    equal_work = dict(update_epochs=10, num_minibatches=8)

    def ours(core: str, **extra) -> float:
        return ours_steps_per_second(args.steps, args.seed, core, root, **extra)

    rows = [
        ("sb3-contrib RecurrentPPO MlpLstmPolicy", 80, sb3_steps_per_second(args.steps, args.seed)),
        (
            "sb3-contrib RecurrentPPO + our RIMsPolicy",
            80,
            sb3_steps_per_second(args.steps, args.seed, rims=True),
        ),
        ("ours, rims, default update", 16, ours("rims")),
        ("ours, lstm, default update", 16, ours("lstm")),
        ("ours, rims, sb3's update work", 80, ours("rims", **equal_work)),
        ("ours, lstm, sb3's update work", 80, ours("lstm", **equal_work)),
    ]
    base = rows[0][2]
    print(f"\n{ENV}, 8 envs x 128 steps, {args.steps} steps per row; CPU, "
          f"{torch.get_num_threads()} torch threads; torch {torch.__version__}")  # fmt: skip
    print(f"{'trainer':<40}{'grad steps/rollout':>20}{'steps/s':>10}{'x sb3':>8}")
    for name, grads, sps in rows:
        print(f"{name:<40}{grads:>20}{sps:>10.0f}{sps / base:>8.2f}")


if __name__ == "__main__":
    main()
