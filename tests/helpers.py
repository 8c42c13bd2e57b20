"""Configurations shared by the tests."""

import struct
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
from omegaconf import OmegaConf
from sheeprl.utils.utils import dotdict
from wandb.proto import wandb_internal_pb2 as pb

from jepa_dreamer.dreamer_v3_jepa import TrainResult
from jepa_dreamer.evaluate import EvalResult
from jepa_dreamer.runner import TINY_MODEL_OVERRIDES, compose_config
from jepa_search.settings import SearchSettings, build_parser, settings_from_args

# A tiny DMC walker run on the CPU: 2 envs, episodes of 100 policy steps, small buffer, no videos
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


def base_args(tmp_path: Path, *extra: str) -> list[str]:
    """A valid command line: 20000 full steps at fidelity 0.1 (2000-step trials), evaluations every 500 steps."""
    return [
        "--env",
        "dmc",
        "--full-steps",
        "20000",
        "--fidelity-frac",
        "0.1",
        "--eval-every",
        "500",
        "--output-dir",
        str(tmp_path / "out"),
        *extra,
    ]


def settings_for(tmp_path: Path, *extra: str) -> SearchSettings:
    return settings_from_args(build_parser().parse_args(base_args(tmp_path, *extra)))


# A real small dry-run search: 512-step trials of the tiny model, 2 evaluations of 2 episodes each
SMALL = [
    "--env",
    "dmc",
    "--full-steps",
    "2560",
    "--fidelity-frac",
    "0.2",
    "--eval-every",
    "256",
    "--eval-episodes",
    "2",
    "--dry-run",
    "--seed0",
    "3",
]

# DMC walker from 64x64 pixels, without creating the environment
OBS_SPACE = gym.spaces.Dict({"rgb": gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)})
ACTIONS = 6


def resolved_cfg(*overrides: str) -> dotdict:
    """The tiny run's configuration, resolved as SheepRL's launcher passes it to the algorithm."""
    cfg = compose_config([*TINY_RUN, *overrides])
    return dotdict(OmegaConf.to_container(cfg, resolve=True))


BLOCK, HEADER = 32768, 7


def wandb_records(path: Path) -> Iterator[pb.Record]:
    """The records of an offline .wandb file (a LevelDB-style log of protobuf `Record`s)."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, chunks = 7, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunks.append(data[pos + HEADER : pos + HEADER + length])
        pos += HEADER + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record
        elif kind == 0:
            break


def scripted_trainer(cfg, hook, seconds_per_eval: float = 0.0) -> TrainResult:
    """A stand-in for `jepa_dreamer.runner.run` with known returns, growing with `jepa_coef`: the low-coefficient
    trials are the ones to prune. It calls the hook as the real loop does, and stops when the hook says so."""
    import time

    every, total = cfg.algo.eval.every, cfg.algo.total_steps
    result = TrainResult(log_dir="")
    for index, step in enumerate(range(every, total + 1, every), start=1):
        time.sleep(seconds_per_eval)
        value = 100.0 * cfg.algo.jepa_coef + index
        ev = EvalResult(index, step, (value, value), (100, 100), 0.0)
        result.evaluations.append(ev)
        result.policy_steps = step
        if hook(ev):
            result.stopped_early = True
            break
    return result
