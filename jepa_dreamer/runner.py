"""Compose a DreamerV3-JEPA configuration and train it in this process, with an evaluation hook.

This is the Python face of `sheeprl exp=dreamer_v3_jepa ...`: the same Hydra configs and the same checks, but the
caller gets a `TrainResult` back and can stop the run from the hook. SheepRL's `run_algorithm` cannot serve here:
it returns nothing and passes no hook.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from functools import partial

import hydra
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from sheeprl.cli import check_configs, finalizing_loggers, resume_from_checkpoint
from sheeprl.utils.metric import MetricAggregator
from sheeprl.utils.timer import timer
from sheeprl.utils.utils import dotdict
from torch.distributions import Distribution

from jepa_dreamer import utils
from jepa_dreamer.dreamer_v3_jepa import TrainResult, train
from jepa_dreamer.evaluate import EvalHook

# A model small enough for end-to-end runs on a CPU (DESIGN.md: about 1 minute per 1000 steps of DMC pixels)
TINY_MODEL_OVERRIDES: tuple[str, ...] = (
    "algo.dense_units=64",
    "algo.mlp_layers=1",
    "algo.world_model.encoder.cnn_channels_multiplier=8",
    "algo.world_model.recurrent_model.recurrent_state_size=64",
    "algo.world_model.transition_model.hidden_size=64",
    "algo.world_model.representation_model.hidden_size=64",
    "algo.world_model.stochastic_size=8",
    "algo.world_model.discrete_size=8",
    "algo.per_rank_batch_size=8",
    "algo.per_rank_sequence_length=32",
    "algo.jepa_proj_dim=64",
    "algo.jepa_hidden=64",
    "fabric.precision=32-true",
)


def output_overrides(folder: str, run_name: str) -> list[str]:
    """Overrides that put every output of a run (logs, checkpoints, buffers, videos, configs) under `folder`."""
    return [f"log_root={folder}", f"run_name={run_name}", "root_dir=."]


def compose_config(overrides: Sequence[str], exp: str = "dreamer_v3_jepa") -> DictConfig:
    """SheepRL's root config with `exp` and `overrides`, as `sheeprl exp=... <overrides>` composes it."""
    import hydra_plugins.jepa_dreamer_searchpath  # noqa: F401  (fails early if the package is not installed)

    with initialize_config_module(config_module="sheeprl.configs", version_base="1.3"):
        return compose(config_name="config", overrides=[f"exp={exp}", *overrides])


def _keep_known_metrics(cfg: dotdict) -> None:
    """What `run_algorithm` does before launching: aggregate only the metrics the algorithm declares."""
    timer.disabled = cfg.metric.log_level == 0 or cfg.metric.disable_timer
    for key in set(cfg.metric.aggregator.metrics.keys()) - utils.AGGREGATOR_KEYS:
        cfg.metric.aggregator.metrics.pop(key, None)
    MetricAggregator.disabled = cfg.metric.log_level == 0 or len(cfg.metric.aggregator.metrics) == 0


def apply_process_settings(cfg: dotdict) -> None:
    """The process-wide switches SheepRL's launcher sets from the config. They change what a step costs: with
    `distribution.validate_args` on, every distribution built in a step checks its arguments on the host."""
    os.environ["OMP_NUM_THREADS"] = str(cfg.num_threads)
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    Distribution.set_default_validate_args(cfg.distribution.validate_args)
    torch.backends.cudnn.benchmark = cfg.torch_backends_cudnn_benchmark
    torch.backends.cudnn.deterministic = cfg.torch_backends_cudnn_deterministic


def run(cfg: DictConfig, hook: EvalHook | None = None) -> TrainResult:
    """Trains the composed `cfg` in this process; `hook` gets every evaluation and may stop the run.

    GPU memory held by the run is released when it returns or raises, so the next run starts clean.
    """
    if cfg.checkpoint.resume_from:
        # SheepRL continues with the checkpoint's configuration; the outputs still go where this run was told
        log_root = cfg.log_root
        cfg = resume_from_checkpoint(cfg)
        cfg.log_root = log_root
    cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    check_configs(cfg)
    apply_process_settings(cfg)
    _keep_known_metrics(cfg)
    fabric = hydra.utils.instantiate(cfg.fabric, _convert_="all")
    fabric.seed_everything(cfg.seed)
    try:
        return fabric.launch(finalizing_loggers(partial(train, hook=hook)), cfg)
    finally:
        del fabric
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
