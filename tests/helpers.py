"""Configurations shared by the tests."""

import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf
from sheeprl.utils.utils import dotdict
from wandb.proto import wandb_internal_pb2 as pb

from jepa_dreamer.dreamer_v3_jepa import Cancelled, TrainResult
from jepa_dreamer.evaluate import EvalResult
from jepa_dreamer.presets import CPU_RENDER_OVERRIDES, TINY_MODEL_OVERRIDES
from jepa_dreamer.runner import compose_config
from jepa_search.parser import build_parser
from jepa_search.settings import SearchSettings
from jepa_search.validate import settings_from_args

# A tiny DMC walker run on the CPU: 2 envs rendered without shadows, episodes of 100 policy steps, small buffer, no
# videos
TINY_RUN = (
    *TINY_MODEL_OVERRIDES,
    "fabric.accelerator=cpu",
    "env.num_envs=2",
    *CPU_RENDER_OVERRIDES,
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


def settings_from_argv(argv: list[str]) -> SearchSettings:
    return settings_from_args(build_parser().parse_args(argv))


def settings_for(tmp_path: Path, *extra: str) -> SearchSettings:
    return settings_from_argv(base_args(tmp_path, *extra))


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

# A search of one process stepping its two environments in that process: a process's environment processes start
# from a fork server, which imports SheepRL (3-4 s of CPU) before the first step. For the tests' small searches,
# started again and again; the README's quick check, the Slurm job and trials side by side keep environment processes
ENVS_IN_PROCESS = ["--override", "env.sync_env=True"]

# DMC walker from 64x64 pixels, without creating the environment
OBS_SPACE = gym.spaces.Dict({"rgb": gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)})
ACTIONS = 6


def resolved_cfg(*overrides: str) -> dotdict:
    """The tiny run's configuration, resolved as SheepRL's launcher passes it to the algorithm."""
    cfg = compose_config([*TINY_RUN, *overrides])
    return dotdict(OmegaConf.to_container(cfg, resolve=True))


def synthetic_batch(seed: int, steps: int = 4, batch: int = 2) -> dict[str, torch.Tensor]:
    """A replay batch of DMC walker pixels, random (zeros hide mistakes), with one terminal step to imagine from."""
    g = torch.Generator().manual_seed(seed)
    terminated = torch.zeros(steps, batch, 1)
    terminated[-1, 0] = 1.0
    return {
        "rgb": torch.randint(0, 256, (steps, batch, 3, 64, 64), generator=g).float(),
        "actions": torch.rand(steps, batch, ACTIONS, generator=g) * 2 - 1,
        "rewards": torch.rand(steps, batch, 1, generator=g),
        "terminated": terminated,
        "truncated": torch.zeros(steps, batch, 1),
        "is_first": torch.zeros(steps, batch, 1),
    }


def assert_identical(a: Any, b: Any, where: str) -> None:
    """Tensors bit-equal (same dtype, shape and values), containers alike all the way down."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


HOST_READS = {"aten::_local_scalar_dense", "aten::equal"}
# The ops that read a tensor on the host on the CPU only. On CUDA: `one_hot` with `num_classes` skips its range
# checks, `_assert_async` (multinomial's check of the probabilities) is a device-side assert, the fused Adam kernel
# reads its step count on the device, and `quantile` checks its `q` only on the CPU
CPU_ONLY = {"aten::one_hot", "aten::_assert_async", "aten::_fused_adam_", "aten::quantile"}
# Ops whose output shape depends on the data: no host read on the CPU, a synchronisation on CUDA
DATA_DEPENDENT_SHAPE = {
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::repeat_interleave",
}


def host_reads(events: Any) -> Counter[str]:
    """The host reads among the profiler's `events`, by the op that made them: the outermost one of `CPU_ONLY`, or
    `aten::is_nonzero` (a tensor's truth value) with the Python function that asked for it. The profiler records every
    op, also those that other ops call inside their kernels (e.g. `multinomial`'s `_assert_async`), which a
    `TorchDispatchMode` does not see."""
    reads: Counter[str] = Counter()
    for event in events:
        if event.name not in HOST_READS:
            continue
        origin, parent = event.name, event.cpu_parent
        while parent is not None:
            if parent.name in CPU_ONLY:
                origin = parent.name
            elif parent.name == "aten::is_nonzero":
                caller = parent.cpu_parent.name if parent.cpu_parent is not None else "?"
                origin = f"aten::is_nonzero in {caller.split(': ')[-1]}"
            parent = parent.cpu_parent
        reads[origin] += 1
    return reads


def markdown_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in `text` (each table's header and separator left out), as stripped
    cells."""
    rows, position = [], 0
    for line in text.splitlines():
        position = position + 1 if line.startswith("|") else 0
        if position > 2:
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


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


def scripted_trainer(cfg, hook, on_log=None, cancel=None, seconds_per_eval: float = 0.0) -> TrainResult:
    """A stand-in for `jepa_dreamer.runner.run` with known returns, growing with `jepa_coef`: the low-coefficient
    trials are the ones to prune. It calls the hook as the real loop does, stops when the hook says so, and raises
    `Cancelled` once `cancel` is set."""
    import time

    every, total = cfg.algo.eval.every, cfg.algo.total_steps
    result = TrainResult(log_dir="")
    for index, step in enumerate(range(every, total + 1, every), start=1):
        time.sleep(seconds_per_eval)
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"cancelled at policy step {step - every}")
        value = 100.0 * cfg.algo.jepa_coef + index
        ev = EvalResult(index, step, (value, value), (100, 100), 0.0)
        result.evaluations.append(ev)
        result.policy_steps = step
        if hook(ev):
            result.stopped_early = True
            break
    return result


def tensorboard_scalars(folder: Path) -> set[str]:
    """The scalar tags of the TensorBoard events under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(folder.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return set(events.Tags()["scalars"])
