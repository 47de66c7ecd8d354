"""Making vector envs: Minigrid (and any registered Gymnasium id with a discrete action space)."""

from envs.factory import EnvError, check_env_id, env_family, make_env, make_vector_env

__all__ = ["EnvError", "check_env_id", "env_family", "make_env", "make_vector_env"]
