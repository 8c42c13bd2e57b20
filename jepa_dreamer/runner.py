"""Compose a DreamerV3-JEPA configuration and train it in this process, with an evaluation hook.

This is the Python face of `sheeprl exp=dreamer_v3_jepa ...`: the same Hydra configs and the same checks, but the
caller gets a `TrainResult` back and can stop the run from the hook. SheepRL's `run_algorithm` cannot serve here:
it returns nothing and passes no hook.

Several runs may train side by side in one process, each in its own thread (the trials of one search worker): on a
GPU each run issues its kernels on a CUDA stream of its own, so that theirs overlap; what is process-wide (Hydra's
composer, torch's threads and switches, Lightning's backward flag, the device while a graph is captured) is shared
under a lock (`jepa_dreamer/shared.py`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_module
from lightning.fabric.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf
from sheeprl.cli import check_configs, resume_from_checkpoint
from sheeprl.utils.utils import dotdict
from torch.distributions import Distribution

from jepa_dreamer.dreamer_v3_jepa import TrainResult, train
from jepa_dreamer.evaluate import EvalHook
from jepa_dreamer.metrics import LogSink
from jepa_dreamer.presets import render_headless
from jepa_dreamer.shared import Shared, SideBySideFabric, gpu_work

# Hydra's composer is one global object: one composition at a time in this process
_COMPOSE_LOCK = threading.Lock()


def compose_config(overrides: Sequence[str], exp: str = "dreamer_v3_jepa") -> DictConfig:
    """SheepRL's root config with `exp` and `overrides`, as `sheeprl exp=... <overrides>` composes it."""
    import hydra_plugins.jepa_dreamer_searchpath  # noqa: F401  (fails early if the package is not installed)

    with _COMPOSE_LOCK, initialize_config_module(config_module="sheeprl.configs", version_base="1.3"):
        return compose(config_name="config", overrides=[f"exp={exp}", *overrides])


class _ProcessSettings:
    """The process-wide switches SheepRL's launcher sets from the config, held while runs use them and restored once
    the last one ends, so that later runs in the process (the trials of a search) do not inherit them. Runs side by
    side must agree on them. They change what a step costs: with `distribution.validate_args` on, every distribution
    built in a step checks its arguments on the host."""

    def __init__(self) -> None:
        self.shared = Shared()
        self.active: tuple[Any, ...] = ()
        self.saved: tuple[Any, ...] = ()
        self.saved_env: str | None = None

    @staticmethod
    def wanted(cfg: dotdict) -> tuple[Any, ...]:
        return (
            int(cfg.num_threads),
            cfg.float32_matmul_precision,
            bool(cfg.distribution.validate_args),
            bool(cfg.torch_backends_cudnn_benchmark),
            bool(cfg.torch_backends_cudnn_deterministic),
        )

    @staticmethod
    def current() -> tuple[Any, ...]:
        cudnn = torch.backends.cudnn
        return (
            torch.get_num_threads(),
            torch.get_float32_matmul_precision(),
            Distribution._validate_args,
            cudnn.benchmark,
            cudnn.deterministic,
        )

    @staticmethod
    def apply(values: tuple[Any, ...], env_threads: str | None) -> None:
        threads, precision, validate, benchmark, deterministic = values
        # SheepRL's launcher sets only the variable, which torch has read already: its threads are set here. One by
        # default, which leaves the other cores to the environment processes (torch's own default, a thread per
        # core, makes OpenMP's spinning threads fight them)
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
        Distribution.set_default_validate_args(validate)
        # Only these two of cuDNN's flags (its setter would reset CUDA's fp32 precision too by default)
        torch.backends.cudnn.set_flags(_benchmark=benchmark, _deterministic=deterministic, _fp32_precision=None)

    @contextlib.contextmanager
    def held(self, cfg: dotdict) -> Iterator[None]:
        wanted = self.wanted(cfg)

        def first() -> None:
            self.saved, self.saved_env, self.active = self.current(), os.environ.get("OMP_NUM_THREADS"), wanted
            self.apply(wanted, str(wanted[0]))

        def again() -> None:
            if wanted != self.active:
                raise ValueError(
                    f"runs side by side in one process must share the process settings (num_threads, "
                    f"float32_matmul_precision, distribution.validate_args, cudnn): {wanted} vs {self.active}"
                )

        with self.shared.held(first, lambda: self.apply(self.saved, self.saved_env), again):
            yield


process_settings = _ProcessSettings().held


def run(
    cfg: DictConfig,
    hook: EvalHook | None = None,
    on_log: LogSink | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Trains the composed `cfg` in this process; `hook` gets every evaluation and may stop the run, `on_log` the
    values of every logging interval; once `cancel` is set, the run raises `Cancelled` at its next iteration.

    GPU memory held by the run is released when it returns or raises, so the next run starts clean.
    """
    render_headless()
    # A run is one process, never launched by `srun`: Lightning's hint to use it, where Slurm is installed, is noise
    # (SheepRL's player makes a Fabric of its own, which looks for Slurm too)
    warnings.filterwarnings("ignore", message="The `srun` command is available", category=PossibleUserWarning)
    if cfg.checkpoint.resume_from:
        # SheepRL continues with the checkpoint's configuration; the outputs still go where this run was told
        log_root = cfg.log_root
        cfg = resume_from_checkpoint(cfg)
        cfg.log_root = log_root
    cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    check_configs(cfg)
    # Lightning's Fabric, whose backward passes runs side by side cannot interleave (`SideBySideFabric`)
    fabric = hydra.utils.instantiate(
        cfg.fabric, _target_=f"{SideBySideFabric.__module__}.SideBySideFabric", _convert_="all"
    )
    fabric.seed_everything(cfg.seed, verbose=False)
    stream = torch.cuda.Stream(fabric.device) if fabric.device.type == "cuda" else None
    try:
        with process_settings(cfg), gpu_work.shared(), torch.cuda.stream(stream):
            return fabric.launch(partial(train, hook=hook, on_log=on_log, cancel=cancel), cfg)
    finally:
        del fabric
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
