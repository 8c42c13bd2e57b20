"""DreamerV3-JEPA: SheepRL's DreamerV3 with a JEPA auxiliary loss and a periodic greedy evaluation.

`train` reads top to bottom: set up, then in every iteration act in all environments, learn by the replay ratio,
evaluate (a hook may stop the run), log, checkpoint. It returns what happened (a `TrainResult`); its lines go to the
`jepa_dreamer` logger. `main` is the entry point SheepRL's CLI finds (`algo.name=dreamer_v3_jepa`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import Logger
from lightning.fabric.utilities.cloud_io import get_filesystem
from sheeprl.algos.dreamer_v2.utils import env_buffer_size, sample_batches
from sheeprl.data.buffers import EnvIndependentReplayBuffer, SequentialReplayBuffer
from sheeprl.utils import fs
from sheeprl.utils.compile import compile_enabled
from sheeprl.utils.logger import get_log_dir, get_logger
from sheeprl.utils.registry import register_algorithm
from sheeprl.utils.utils import Ratio, off_policy_schedule, save_configs
from torch import Tensor

from jepa_dreamer.env_loop import EnvLoop
from jepa_dreamer.evaluate import EvalHook, EvalResult, Evaluator
from jepa_dreamer.graphed import host_batches
from jepa_dreamer.learner import Learner
from jepa_dreamer.metrics import IntervalLog, LogSink, MetricMeans
from jepa_dreamer.prefetch import BatchFeed, Prefetched
from jepa_dreamer.shared import gpu_work
from jepa_dreamer.utils import AGGREGATOR_KEYS

log = logging.getLogger(__name__)


class Cancelled(KeyboardInterrupt):
    """The run was cancelled from outside (the search was interrupted while it trained in a thread of its own)."""


@dataclass
class TrainResult:
    """What a run did: its steps, its evaluations and whether a hook stopped it."""

    log_dir: str
    policy_steps: int = 0
    gradient_steps: int = 0
    evaluations: list[EvalResult] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0


@dataclass
class Schedule:
    """The iterations of the run (one policy step in every environment each), where it starts (a resumed run goes
    on from its checkpoint), and how many gradient steps each one trains (SheepRL's `off_policy_schedule`)."""

    steps_per_iter: int
    start_iter: int
    total_iters: int
    learning_starts: int
    train_starts: int
    pretrain_steps: int
    ratio: Ratio

    @classmethod
    def of(cls, fabric: Fabric, cfg: dict[str, Any], state: dict[str, Any]) -> Schedule:
        world_size = fabric.world_size
        steps_per_iter = int(cfg.env.num_envs * world_size)
        start_iter = state["iter_num"] // world_size + 1 if state else 1
        total_iters = int(cfg.algo.total_steps // steps_per_iter) if not cfg.dry_run else 1
        learning_starts, train_starts, pretrain_steps, total_iters, ratio = off_policy_schedule(
            cfg, state or None, start_iter, total_iters, steps_per_iter, world_size
        )
        return cls(steps_per_iter, start_iter, total_iters, learning_starts, train_starts, pretrain_steps, ratio)

    def iterations(self) -> Iterator[int]:
        return iter(range(self.start_iter, self.total_iters + 1))

    def gradient_steps(self, iter_num: int, policy_step: int, world_size: int) -> int:
        """How many gradient steps iteration `iter_num` trains (0 before training starts)."""
        if iter_num < self.train_starts:
            return 0
        steps = self.ratio((policy_step - (self.train_starts - 1) * self.steps_per_iter) / world_size)
        return steps + (self.pretrain_steps if iter_num == self.train_starts else 0)


def _replay_buffer(
    fabric: Fabric, cfg: dict[str, Any], log_dir: str, state: dict[str, Any]
) -> EnvIndependentReplayBuffer:
    if state.get("rb") is not None and cfg.buffer.checkpoint:
        rb = state["rb"]
        return rb if isinstance(rb, EnvIndependentReplayBuffer) else rb[fabric.global_rank]
    return EnvIndependentReplayBuffer(
        env_buffer_size(fabric, cfg, dry_run_size=2),
        n_envs=cfg.env.num_envs,
        memmap=cfg.buffer.memmap,
        memmap_dir=fs.memmap_dir(cfg, log_dir, fabric.global_rank),
        buffer_cls=SequentialReplayBuffer,
        seed=cfg.seed + fabric.global_rank,
    )


def _open_log_dir(fabric: Fabric, cfg: dict[str, Any]) -> tuple[str, Logger | None]:
    """The run's folder, with its resolved config, and its TensorBoard logger when `metric.log_level` > 0."""
    logger = get_logger(fabric, cfg) if fabric.is_global_zero else None
    if logger is not None:
        logger.log_hyperparams(cfg)
        # The logger's version folder: SheepRL's get_log_dir, which looks at the loggers of Fabric (the logger is
        # ours), would number a second one
        log_dir = logger.log_dir
    else:
        # get_log_dir numbers the versions in the run's folder, and warns when there is no such folder yet
        save_dir = fs.join(cfg.log_root, cfg.root_dir, cfg.run_name)
        get_filesystem(save_dir).makedirs(save_dir, exist_ok=True)
        log_dir = get_log_dir(fabric, cfg.root_dir, cfg.run_name, log_root=cfg.log_root)
    if fabric.is_global_zero:
        save_configs(cfg, log_dir)
    return log_dir, logger


def _evaluate(logger: Logger | None, evaluator: Evaluator, result: TrainResult, policy_step: int) -> EvalResult:
    index = len(result.evaluations) + 1
    log.info(f"Eval {index} at policy_step={policy_step}: playing {evaluator.episodes} greedy episodes")
    evaluation = evaluator.evaluate(index, policy_step)
    result.evaluations.append(evaluation)
    log.info(
        f"Eval {index} at policy_step={policy_step}: return {evaluation.mean:.2f} ± {evaluation.std:.2f} over "
        f"{len(evaluation.returns)} episodes ({evaluation.seconds:.1f}s)"
    )
    if logger is not None:
        logger.log_metrics(
            {
                "Eval/return_mean": evaluation.mean,
                "Eval/return_std": evaluation.std,
                "Eval/return_min": evaluation.min,
                "Eval/return_max": evaluation.max,
                "Eval/episode_length": float(np.mean(evaluation.lengths)),
                "Eval/seconds": evaluation.seconds,
            },
            policy_step,
        )
    return evaluation


def _batch_feed(
    fabric: Fabric, cfg: dict[str, Any], learner: Learner, rb: EnvIndependentReplayBuffer
) -> BatchFeed[dict[str, Tensor]]:
    """The batches of the iterations' gradient steps, sampled from the buffer, drawn ahead as `algo.prefetch` says."""
    # The graph route on a GPU takes the batches on the host: it copies them in from pinned memory, without a sync
    on_host = learner.graphed is not None and learner.graphed.takes_host_batches

    def draw(n_steps: int) -> Iterator[dict[str, Tensor]]:
        return host_batches(cfg, rb, n_steps) if on_host else sample_batches(fabric, cfg, rb, n_steps)

    return BatchFeed(draw, cfg.algo.prefetch, fabric.device)


def _learn(
    learner: Learner,
    batches: Iterable[dict[str, Tensor]],
    metrics: MetricMeans,
    measure_ratio: bool,
    policy_step: int,
) -> None:
    """A gradient step on each batch; a diverged run fails with its step."""
    try:
        for i, batch in enumerate(batches):
            learner.train_step(batch, metrics, measure_ratio=measure_ratio and i == 0)
    except RuntimeError:
        # NaN weights usually break a sampling op before the check below: name the cause
        learner.raise_if_diverged(policy_step)
        raise
    finally:
        if isinstance(batches, Prefetched):
            batches.close()
    learner.raise_if_diverged(policy_step)


def _save_checkpoint(
    fabric: Fabric,
    cfg: dict[str, Any],
    log_dir: str,
    learner: Learner,
    schedule: Schedule,
    rb: EnvIndependentReplayBuffer,
    iter_num: int,
    policy_step: int,
    result: TrainResult,
) -> None:
    state = learner.state_dict()
    state.update(
        ratio=schedule.ratio.state_dict(),
        iter_num=iter_num * fabric.world_size,
        batch_size=cfg.algo.per_rank_batch_size * fabric.world_size,
        last_checkpoint=policy_step,
        evaluations=[e.as_dict() for e in result.evaluations],
    )
    fabric.call(
        "on_checkpoint_coupled",
        fabric=fabric,
        ckpt_path=f"{log_dir}/checkpoint/ckpt_{policy_step}_{fabric.global_rank}.ckpt",
        state=state,
        replay_buffer=rb if cfg.buffer.checkpoint else None,
    )


def _close(*closers: Callable[[], None]) -> None:
    """Close the batch feed and the environments. While an exception is on its way out, an error in closing them is
    logged, not raised
    in its place: Ctrl-C and Slurm's scancel signal the environments' processes too, whose pipes then break, and the
    interrupt must still reach the search."""
    failing = sys.exc_info()[1] is not None
    for close in closers:
        try:
            close()
        except Exception as e:
            if not failing:
                raise
            log.warning(f"closing the environments after the failure above: {type(e).__name__}: {e}")


def train(
    fabric: Fabric,
    cfg: dict[str, Any],
    hook: EvalHook | None = None,
    on_log: LogSink | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Trains DreamerV3-JEPA as configured; after every evaluation, `hook(result)` returning True stops the run;
    `on_log` gets the values of every logging interval; `cancel`, once set, raises `Cancelled` at the next iteration.

    Environments and the evaluator are closed on every exit, also when the hook stops the run or a step raises, so
    that the next run in the same process starts clean.
    """
    started = time.perf_counter()
    resume_from = cfg.checkpoint.resume_from
    state = fs.load_checkpoint(fabric, resume_from, weights_only=False) if resume_from else {}
    cfg.env.frame_stack = -1
    if 2 ** int(np.log2(cfg.env.screen_size)) != cfg.env.screen_size:
        raise ValueError(f"env.screen_size must be a power of 2, got {cfg.env.screen_size}")
    log_dir, logger = _open_log_dir(fabric, cfg)
    result = TrainResult(log_dir, evaluations=[EvalResult.from_dict(d) for d in state.get("evaluations", [])])
    env_loop = EnvLoop(fabric, cfg, log_dir)
    evaluator: Evaluator | None = None
    feed: BatchFeed[dict[str, Tensor]] | None = None
    status = "failed"
    try:
        learner = Learner(
            fabric, cfg, env_loop.envs.single_observation_space, env_loop.actions_dim, env_loop.is_continuous, state
        )
        if int(cfg.algo.eval.episodes) > 0 and fabric.is_global_zero:
            evaluator = Evaluator(fabric, cfg, learner.player, env_loop.actions_dim, env_loop.is_continuous)
        rb = _replay_buffer(fabric, cfg, log_dir, state)
        schedule = Schedule.of(fabric, cfg, state)
        feed = _batch_feed(fabric, cfg, learner, rb)
        policy_step = state["iter_num"] * cfg.env.num_envs if state else 0
        last_checkpoint = state.get("last_checkpoint", 0)
        metrics = MetricMeans(set(cfg.metric.aggregator.metrics) & AGGREGATOR_KEYS)
        interval = IntervalLog(cfg, fabric.world_size, [logger, on_log], policy_step, learner.gradient_steps)
        # The encoder-gradient ratio costs two backward passes: once per logging interval, on its first gradient
        # step, and not under SheepRL's compiled route (its CUDA graphs replay a backward once per forward) nor ours
        # (a replayed graph runs one fixed step)
        ratio_measured = learner.heads is not None and not compile_enabled(fabric, cfg) and learner.graphed is None
        measure_ratio = ratio_measured
        eval_every = int(cfg.algo.eval.every)

        env_loop.reset()
        learner.player.init_states()
        for iter_num in schedule.iterations():
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled at policy step {policy_step}")
            # A run beside this one in the process may need the device alone (to capture its step): it waits here
            gpu_work.pause()
            policy_step += schedule.steps_per_iter
            last = iter_num == schedule.total_iters

            # Act: random actions until learning starts, then the player's
            with torch.inference_mode():
                env_loop.step(
                    feed.adds(rb), learner.player, random=iter_num <= schedule.learning_starts, metrics=metrics
                )

            # Learn: as many gradient steps as the replay ratio allows
            gradient_steps = schedule.gradient_steps(iter_num, policy_step, fabric.world_size)
            if gradient_steps > 0:
                _learn(learner, feed.batches(gradient_steps), metrics, measure_ratio, policy_step)
                measure_ratio = False

            # Evaluate every `eval_every` policy steps and at the end; the hook may stop the run
            stopping = False
            due = eval_every > 0 and policy_step // eval_every > (policy_step - schedule.steps_per_iter) // eval_every
            if evaluator is not None and (due or last):
                evaluation = _evaluate(logger, evaluator, result, policy_step)
                stopping = hook is not None and hook(evaluation) and not last
                result.stopped_early = stopping

            # Log what the interval aggregated (a stopped run too, as at its last iteration)
            if fabric.is_global_zero and interval.due(policy_step, last or stopping):
                interval.write(policy_step, learner.gradient_steps, metrics)
                measure_ratio = ratio_measured
            if stopping:
                break

            # Checkpoint every `checkpoint.every` policy steps (and at the end with `checkpoint.save_last`)
            every = cfg.checkpoint.every
            if (every > 0 and policy_step - last_checkpoint >= every) or (last and cfg.checkpoint.save_last):
                last_checkpoint = policy_step
                # SheepRL's checkpoint marks the buffer's last steps truncated while it saves: no draw ahead meanwhile
                with feed.lock:
                    _save_checkpoint(fabric, cfg, log_dir, learner, schedule, rb, iter_num, policy_step, result)
        result.policy_steps = policy_step
        result.gradient_steps = learner.gradient_steps
        status = "success"
    finally:
        _close(*(part.close for part in (feed, env_loop, evaluator) if part is not None))
        if logger is not None:
            logger.finalize(status)
    result.seconds = time.perf_counter() - started
    return result


@register_algorithm()
def main(fabric: Fabric, cfg: dict[str, Any]) -> None:
    """The entry point of `sheeprl exp=dreamer_v3_jepa ...`: trains, printing the run's lines to the console."""
    if cfg.algo.get("run_test"):
        warnings.warn("algo.run_test is ignored by dreamer_v3_jepa: its own evaluator runs at the end", stacklevel=2)
    console = logging.StreamHandler(sys.stdout)
    package = logging.getLogger("jepa_dreamer")
    package.addHandler(console)
    try:
        train(fabric, cfg)
    finally:
        package.removeHandler(console)
