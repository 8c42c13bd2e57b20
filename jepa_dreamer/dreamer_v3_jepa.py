"""DreamerV3-JEPA: SheepRL's DreamerV3 with a JEPA auxiliary loss and a periodic greedy evaluation.

The loop reads top to bottom: play one step in every environment, store it, train by the replay ratio, log,
evaluate, checkpoint. `train` returns what happened (a `TrainResult`) and calls an optional hook after each
evaluation, which can stop the run; `main` is the entry point SheepRL's CLI finds (`algo.name=dreamer_v3_jepa`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import hydra
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from sheeprl.algos.dreamer_v2.utils import env_buffer_size, sample_batches
from sheeprl.algos.dreamer_v3.utils import prepare_obs
from sheeprl.data.buffers import EnvIndependentReplayBuffer, SequentialReplayBuffer
from sheeprl.utils import fs
from sheeprl.utils.compile import compile_enabled
from sheeprl.utils.env import get_episode_stats, make_env
from sheeprl.utils.logger import get_log_dir, get_logger
from sheeprl.utils.metric import MetricAggregator
from sheeprl.utils.registry import register_algorithm
from sheeprl.utils.timer import timer
from sheeprl.utils.utils import off_policy_schedule, save_configs

from jepa_dreamer.envs import make_vector_env
from jepa_dreamer.evaluate import EvalHook, EvalResult, Evaluator
from jepa_dreamer.learner import Learner


@dataclass
class TrainResult:
    """What a run did: its steps, its evaluations and whether a hook stopped it."""

    log_dir: str
    policy_steps: int = 0
    gradient_steps: int = 0
    evaluations: list[EvalResult] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0


def _one_hot_actions(actions: np.ndarray, actions_dim: tuple[int, ...], n_envs: int) -> np.ndarray:
    """Sampled discrete actions (one column per action dimension) as the concatenated one-hots the buffer stores."""
    per_dim = actions.reshape(n_envs, len(actions_dim)).T
    return np.concatenate([F.one_hot(torch.as_tensor(a), d).numpy() for a, d in zip(per_dim, actions_dim)], axis=-1)


class EnvLoop:
    """The training environments and the transition being assembled for the replay buffer."""

    def __init__(self, fabric: Fabric, cfg: dict[str, Any], log_dir: str) -> None:
        self.cfg = cfg
        self.fabric = fabric
        self.n_envs = int(cfg.env.num_envs)
        rank = fabric.global_rank
        self.envs = make_vector_env(
            cfg,
            [
                make_env(cfg, cfg.seed + rank * self.n_envs + i, rank * self.n_envs, log_dir, "train", vector_env_idx=i)
                for i in range(self.n_envs)
            ],
        )
        self.envs.action_space.seed(cfg.seed + rank)
        space = self.envs.single_action_space
        self.is_continuous = isinstance(space, gym.spaces.Box)
        if self.is_continuous:
            self.actions_dim = tuple(space.shape)
        elif isinstance(space, gym.spaces.MultiDiscrete):
            self.actions_dim = tuple(space.nvec.tolist())
        else:
            self.actions_dim = (int(space.n),)
        self.obs_keys = list(cfg.algo.cnn_keys.encoder) + list(cfg.algo.mlp_keys.encoder)
        self.obs: dict[str, np.ndarray] = {}
        self.step_data: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        self.obs = self.envs.reset(seed=self.cfg.seed + self.fabric.global_rank * self.n_envs)[0]
        zeros = np.zeros((1, self.n_envs, 1))
        self.step_data = {k: self.obs[k][np.newaxis] for k in self.obs_keys}
        self.step_data.update(
            rewards=zeros.copy(), truncated=zeros.copy(), terminated=zeros.copy(), is_first=np.ones_like(zeros)
        )

    def actions(self, player: Any, random: bool) -> tuple[np.ndarray, np.ndarray]:
        """(what the buffer stores, what the environments receive): random before learning starts, else the
        player's sampled actions."""
        if random:
            env_actions = np.asarray(self.envs.action_space.sample())
            if self.is_continuous:
                return env_actions, env_actions
            return _one_hot_actions(env_actions, self.actions_dim, self.n_envs), env_actions
        torch_obs = prepare_obs(self.fabric, self.obs, cnn_keys=self.cfg.algo.cnn_keys.encoder, num_envs=self.n_envs)
        acts = player.get_actions(torch_obs)
        stored = torch.cat(acts, -1).cpu().numpy()
        if self.is_continuous:
            return stored, torch.stack(acts, dim=-1).cpu().numpy()
        return stored, torch.stack([a.argmax(dim=-1) for a in acts], dim=-1).cpu().numpy()

    def step(self, rb: EnvIndependentReplayBuffer, player: Any, random: bool, aggregator: Any) -> None:
        """Plays one step in every environment and stores the transition; an ended episode also stores its final
        observation (the vector env has already reset it) and restarts the player's state of that environment."""
        stored, env_actions = self.actions(player, random)
        self.step_data["actions"] = stored.reshape((1, self.n_envs, -1))
        rb.add(self.step_data, validate_args=self.cfg.buffer.validate_args)
        next_obs, rewards, terminated, truncated, infos = self.envs.step(
            env_actions.reshape(self.envs.action_space.shape)
        )
        for _, ep_return, ep_length in get_episode_stats(infos):
            if aggregator is not None and not aggregator.disabled:
                aggregator.update("Rewards/rew_avg", ep_return)
                aggregator.update("Game/ep_len_avg", ep_length)
        rewards = rewards.reshape((1, self.n_envs, -1))
        self.step_data = {k: next_obs[k][np.newaxis] for k in self.obs_keys}
        self.step_data["rewards"] = np.tanh(rewards) if self.cfg.env.clip_rewards else rewards
        self.step_data["terminated"] = terminated.reshape((1, self.n_envs, -1)).astype(np.float64)
        self.step_data["truncated"] = truncated.reshape((1, self.n_envs, -1)).astype(np.float64)
        self.step_data["is_first"] = np.zeros((1, self.n_envs, 1))
        ended = np.flatnonzero(np.logical_or(terminated, truncated))
        if ended.size > 0:
            final = {k: np.stack([infos["final_obs"][i][k] for i in ended])[np.newaxis] for k in self.obs_keys}
            final.update(
                terminated=self.step_data["terminated"][:, ended],
                truncated=self.step_data["truncated"][:, ended],
                rewards=self.step_data["rewards"][:, ended],
                actions=np.zeros((1, ended.size, int(np.sum(self.actions_dim)))),
                is_first=np.zeros((1, ended.size, 1)),
            )
            rb.add(final, ended.tolist(), validate_args=self.cfg.buffer.validate_args)
            # The next row of these environments starts a new episode
            for key in ("rewards", "terminated", "truncated"):
                self.step_data[key][:, ended] = 0.0
            self.step_data["is_first"][:, ended] = 1.0
            player.init_states(ended.tolist())
        self.obs = next_obs

    def close(self) -> None:
        self.envs.close()


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


def _log_evaluation(fabric: Fabric, result: EvalResult) -> None:
    fabric.print(
        f"Eval {result.index} at policy_step={result.policy_step}: return {result.mean:.2f} ± {result.std:.2f} "
        f"over {len(result.returns)} episodes ({result.seconds:.1f}s)"
    )
    if fabric.loggers:
        fabric.log_dict(
            {
                "Eval/return_mean": result.mean,
                "Eval/return_std": result.std,
                "Eval/return_min": result.min,
                "Eval/return_max": result.max,
                "Eval/episode_length": float(np.mean(result.lengths)),
            },
            result.policy_step,
        )


def train(fabric: Fabric, cfg: dict[str, Any], hook: EvalHook | None = None) -> TrainResult:
    """Trains DreamerV3-JEPA as configured; after every evaluation, `hook(result)` returning True stops the run.

    Environments, logger files and the evaluator are closed on every exit, also when the hook stops the run or a
    step raises, so that the next run in the same process starts clean.
    """
    started = time.perf_counter()
    state: dict[str, Any] = {}
    if cfg.checkpoint.resume_from:
        state = fs.load_checkpoint(fabric, cfg.checkpoint.resume_from, weights_only=False)
    cfg.env.frame_stack = -1
    if 2 ** int(np.log2(cfg.env.screen_size)) != cfg.env.screen_size:
        raise ValueError(f"env.screen_size must be a power of 2, got {cfg.env.screen_size}")
    logger = get_logger(fabric, cfg)
    if logger and fabric.is_global_zero:
        fabric._loggers = [logger]
        fabric.logger.log_hyperparams(cfg)
    log_dir = get_log_dir(fabric, cfg.root_dir, cfg.run_name, log_root=cfg.log_root)
    result = TrainResult(log_dir=log_dir)
    env_loop = EnvLoop(fabric, cfg, log_dir)
    evaluator: Evaluator | None = None
    try:
        learner = Learner(
            fabric, cfg, env_loop.envs.single_observation_space, env_loop.actions_dim, env_loop.is_continuous, state
        )
        player = learner.player
        if int(cfg.algo.eval.episodes) > 0 and fabric.is_global_zero:
            evaluator = Evaluator(fabric, cfg, player, env_loop.actions_dim, env_loop.is_continuous)
        if fabric.is_global_zero:
            save_configs(cfg, log_dir)
        aggregator = None
        if not MetricAggregator.disabled:
            aggregator = hydra.utils.instantiate(cfg.metric.aggregator, _convert_="all").to(fabric.device)
        rb = _replay_buffer(fabric, cfg, log_dir, state)

        world_size = fabric.world_size
        steps_per_iter = int(cfg.env.num_envs * world_size)
        resumed = bool(cfg.checkpoint.resume_from)
        start_iter = state["iter_num"] // world_size + 1 if resumed else 1
        policy_step = state["iter_num"] * cfg.env.num_envs if resumed else 0
        total_iters = int(cfg.algo.total_steps // steps_per_iter) if not cfg.dry_run else 1
        learning_starts, train_starts, pretrain_steps, total_iters, ratio = off_policy_schedule(
            cfg, state if resumed else None, start_iter, total_iters, steps_per_iter, world_size
        )
        last_log = state.get("last_log", 0)
        last_checkpoint = state.get("last_checkpoint", 0)
        result.evaluations = [EvalResult.from_dict(d) for d in state.get("evaluations", [])]
        eval_every = int(cfg.algo.eval.every)
        measure_ratio = True
        # The encoder-gradient ratio costs two backward passes: only when it is logged, and by the plain step (a
        # compiled one replays its backward graph once per forward)
        ratio_logged = learner.heads is not None and aggregator is not None and not compile_enabled(fabric, cfg)

        env_loop.reset()
        player.init_states()
        for iter_num in range(start_iter, total_iters + 1):
            policy_step += steps_per_iter
            with torch.inference_mode():
                env_loop.step(rb, player, random=iter_num <= learning_starts, aggregator=aggregator)

            if iter_num >= train_starts:
                gradient_steps = ratio((policy_step - (train_starts - 1) * steps_per_iter) / world_size)
                if iter_num == train_starts:
                    gradient_steps += pretrain_steps
                try:
                    for batch in sample_batches(fabric, cfg, rb, gradient_steps):
                        learner.train_step(batch, aggregator, measure_ratio=measure_ratio and ratio_logged)
                        measure_ratio = False
                except RuntimeError:
                    # NaN weights usually break a sampling op before the check below: name the cause
                    learner.raise_if_diverged(policy_step)
                    raise
                if gradient_steps > 0:
                    learner.raise_if_diverged(policy_step)

            last_iter = iter_num == total_iters
            stopping = False
            due = eval_every > 0 and policy_step // eval_every > (policy_step - steps_per_iter) // eval_every
            if evaluator is not None and (due or last_iter):
                evaluation = evaluator.evaluate(len(result.evaluations) + 1, policy_step)
                result.evaluations.append(evaluation)
                _log_evaluation(fabric, evaluation)
                stopping = hook is not None and hook(evaluation) and not last_iter
                result.stopped_early = stopping

            # A run stopped by its hook logs what it aggregated so far, like a run at its last iteration
            if cfg.metric.log_level > 0 and (policy_step - last_log >= cfg.metric.log_every or last_iter or stopping):
                if aggregator is not None and not aggregator.disabled:
                    fabric.log_dict(aggregator.compute(), policy_step)
                    aggregator.reset()
                fabric.log("Params/replay_ratio", learner.gradient_steps * world_size / policy_step, policy_step)
                if not timer.disabled:
                    timer.reset()
                last_log = policy_step
                measure_ratio = True
            if stopping:
                break

            every = cfg.checkpoint.every
            if (every > 0 and policy_step - last_checkpoint >= every) or (last_iter and cfg.checkpoint.save_last):
                last_checkpoint = policy_step
                ckpt_state = learner.state_dict()
                ckpt_state.update(
                    ratio=ratio.state_dict(),
                    iter_num=iter_num * world_size,
                    batch_size=cfg.algo.per_rank_batch_size * world_size,
                    last_log=last_log,
                    last_checkpoint=last_checkpoint,
                    evaluations=[e.as_dict() for e in result.evaluations],
                )
                fabric.call(
                    "on_checkpoint_coupled",
                    fabric=fabric,
                    ckpt_path=f"{log_dir}/checkpoint/ckpt_{policy_step}_{fabric.global_rank}.ckpt",
                    state=ckpt_state,
                    replay_buffer=rb if cfg.buffer.checkpoint else None,
                )
        result.policy_steps = policy_step
        result.gradient_steps = learner.gradient_steps
    finally:
        env_loop.close()
        if evaluator is not None:
            evaluator.close()
    result.seconds = time.perf_counter() - started
    return result


@register_algorithm()
def main(fabric: Fabric, cfg: dict[str, Any]) -> None:
    """The entry point of `sheeprl exp=dreamer_v3_jepa ...`: trains, logging the periodic evaluations."""
    if cfg.algo.get("run_test"):
        warnings.warn("algo.run_test is ignored by dreamer_v3_jepa: its own evaluator runs at the end", stacklevel=2)
    train(fabric, cfg)
