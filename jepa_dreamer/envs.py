"""Vectorised environments for training and evaluation, and the player's actions as they take them."""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sheeprl.utils.env import get_vector_env_cls
from torch import Tensor

# What the fork server imports once for every environment process it starts: unpickling SheepRL's `make_env` thunk
# imports SheepRL (and torch and every algorithm with it), seconds of CPU per process. Not dm_control: importing it
# opens an EGL display (MUJOCO_GL=egl), which a fork must not copy
FORKSERVER_PRELOAD = ("sheeprl.utils.env", "jepa_dreamer.envs")


def with_render_quality(thunk: Callable[[], gym.Env], shadow_size: int | None, samples: int | None) -> gym.Env:
    """The environment `thunk` makes, its MuJoCo scene rendered with a shadow map of `shadow_size` pixels (0: no
    shadows) and `samples` anti-aliasing samples per pixel (0: none), each where given. Set before its first frame,
    when MuJoCo makes the rendering context that reads them; an environment without MuJoCo is left as it is."""
    env = thunk()
    # SheepRL's DMC wrapper holds the dm_control environment as `env`
    physics = getattr(getattr(env.unwrapped, "env", None), "physics", None)
    if physics is not None:
        quality = physics.model.vis.quality
        if shadow_size is not None:
            quality.shadowsize = shadow_size
        if samples is not None:
            quality.offsamples = samples
    return env


def make_vector_env(cfg: dict[str, Any], thunks: Sequence[Callable[[], gym.Env]]) -> gym.vector.VectorEnv:
    """SheepRL's vector env (`env.sync_env`), rendered as `env.shadow_size` and `env.render_samples` say. Parallel
    environments start from a fork server, not by forking this process: a fork of a process that already renders
    (EGL) or runs torch threads can deadlock in the child."""
    shadow_size, samples = cfg.env.get("shadow_size"), cfg.env.get("render_samples")
    if shadow_size is not None or samples is not None:
        thunks = [functools.partial(with_render_quality, thunk, shadow_size, samples) for thunk in thunks]
    if cfg.env.sync_env:
        return get_vector_env_cls(True)(list(thunks))
    # Taken when the fork server starts (the first parallel env of the process); `__main__` is multiprocessing's own
    multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", *FORKSERVER_PRELOAD])
    return get_vector_env_cls(False)(list(thunks), context="forkserver")


def env_actions(actions: Sequence[Tensor], is_continuous: bool) -> np.ndarray:
    """A player's actions (one tensor per action dimension, one-hot when discrete) as the environments take them."""
    if is_continuous:
        return torch.stack(list(actions), dim=-1).cpu().numpy()
    return torch.stack([a.argmax(dim=-1) for a in actions], dim=-1).cpu().numpy()
