"""Vectorised environments for training and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
from sheeprl.utils.env import get_vector_env_cls


def make_vector_env(cfg: dict[str, Any], thunks: Sequence[Callable[[], gym.Env]]) -> gym.vector.VectorEnv:
    """SheepRL's vector env (`env.sync_env`). Parallel environments start from a fork server, not by forking this
    process: a fork of a process that already renders (EGL) or runs torch threads can deadlock in the child."""
    kwargs = {} if cfg.env.sync_env else {"context": "forkserver"}
    return get_vector_env_cls(cfg.env.sync_env)(list(thunks), **kwargs)
