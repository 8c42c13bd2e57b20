"""Compose a DreamerV3-JEPA configuration and train it in this process, with an evaluation hook.

This is the Python face of `sheeprl exp=dreamer_v3_jepa ...`: the same Hydra configs and the same checks, but the
caller gets a `TrainResult` back and can stop the run from the hook. SheepRL's `run_algorithm` cannot serve here:
it returns nothing and passes no hook.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator, Sequence
from functools import partial

import hydra
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from sheeprl.cli import check_configs, resume_from_checkpoint
from sheeprl.utils.utils import dotdict
from torch.distributions import Distribution

from jepa_dreamer.dreamer_v3_jepa import TrainResult, train
from jepa_dreamer.envs import render_headless
from jepa_dreamer.evaluate import EvalHook
from jepa_dreamer.metrics import LogSink


def compose_config(overrides: Sequence[str], exp: str = "dreamer_v3_jepa") -> DictConfig:
    """SheepRL's root config with `exp` and `overrides`, as `sheeprl exp=... <overrides>` composes it."""
    import hydra_plugins.jepa_dreamer_searchpath  # noqa: F401  (fails early if the package is not installed)

    with initialize_config_module(config_module="sheeprl.configs", version_base="1.3"):
        return compose(config_name="config", overrides=[f"exp={exp}", *overrides])


@contextlib.contextmanager
def process_settings(cfg: dotdict) -> Iterator[None]:
    """The process-wide switches SheepRL's launcher sets from the config, for the duration of a run and restored
    after, so that runs in one process (the trials of a search) do not inherit each other's. They change what a step
    costs: with `distribution.validate_args` on, every distribution built in a step checks its arguments on the
    host."""
    cudnn = torch.backends.cudnn
    saved = (
        os.environ.get("OMP_NUM_THREADS"),
        torch.get_num_threads(),
        torch.get_float32_matmul_precision(),
        Distribution._validate_args,
        cudnn.benchmark,
        cudnn.deterministic,
    )
    # SheepRL's launcher sets only the variable, which torch has read already: its threads are set here. One by
    # default, which leaves the other cores to the environment processes (torch's own default, a thread per core,
    # makes OpenMP's spinning threads fight them)
    os.environ["OMP_NUM_THREADS"] = str(cfg.num_threads)
    torch.set_num_threads(int(cfg.num_threads))
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    Distribution.set_default_validate_args(cfg.distribution.validate_args)
    cudnn.benchmark, cudnn.deterministic = cfg.torch_backends_cudnn_benchmark, cfg.torch_backends_cudnn_deterministic
    try:
        yield
    finally:
        threads, torch_threads, precision, validate, cudnn.benchmark, cudnn.deterministic = saved
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = threads
        torch.set_num_threads(torch_threads)
        torch.set_float32_matmul_precision(precision)
        Distribution.set_default_validate_args(validate)


def run(cfg: DictConfig, hook: EvalHook | None = None, on_log: LogSink | None = None) -> TrainResult:
    """Trains the composed `cfg` in this process; `hook` gets every evaluation and may stop the run, `on_log` the
    values of every logging interval.

    GPU memory held by the run is released when it returns or raises, so the next run starts clean.
    """
    render_headless()
    if cfg.checkpoint.resume_from:
        # SheepRL continues with the checkpoint's configuration; the outputs still go where this run was told
        log_root = cfg.log_root
        cfg = resume_from_checkpoint(cfg)
        cfg.log_root = log_root
    cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    check_configs(cfg)
    fabric = hydra.utils.instantiate(cfg.fabric, _convert_="all")
    fabric.seed_everything(cfg.seed, verbose=False)
    try:
        with process_settings(cfg):
            return fabric.launch(partial(train, hook=hook, on_log=on_log), cfg)
    finally:
        del fabric
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
