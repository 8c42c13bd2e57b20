"""Shared set-up: DMC renders through EGL (set before dm_control is imported) and few CPU threads."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

from jepa_dreamer.runner import TINY_MODEL_OVERRIDES  # noqa: E402

torch.set_num_threads(2)

# A tiny DMC walker run on the CPU: 2 envs, short episodes, small buffer, no videos
TINY_RUN = (
    *TINY_MODEL_OVERRIDES,
    "fabric.accelerator=cpu",
    "env.num_envs=2",
    "env.max_episode_steps=100",
    "env.capture_video=False",
    "algo.learning_starts=64",
    "algo.replay_ratio=0.1",
    "algo.eval.episodes=2",
    "buffer.size=4096",
    "metric.log_every=64",
)


@pytest.fixture
def tiny_run() -> tuple[str, ...]:
    return TINY_RUN
