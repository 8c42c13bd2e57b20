"""The training environments: acting in all of them at once, and the transitions they add to the replay buffer."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from sheeprl.algos.dreamer_v3.agent import PlayerDV3
from sheeprl.algos.dreamer_v3.utils import prepare_obs
from sheeprl.data.buffers import EnvIndependentReplayBuffer
from sheeprl.utils.env import get_episode_stats, make_env

from jepa_dreamer import seeds
from jepa_dreamer.envs import env_actions, make_vector_env
from jepa_dreamer.metrics import MetricMeans


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
        self.seeds = seeds.training(cfg.seed, self.n_envs, rank)
        self.envs = make_vector_env(
            cfg,
            [
                make_env(cfg, env_seed, rank * self.n_envs, log_dir, "train", vector_env_idx=i)
                for i, env_seed in enumerate(self.seeds)
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
        self.obs = self.envs.reset(seed=self.seeds)[0]
        zeros = np.zeros((1, self.n_envs, 1))
        self.step_data = {k: self.obs[k][np.newaxis] for k in self.obs_keys}
        self.step_data.update(
            rewards=zeros.copy(), truncated=zeros.copy(), terminated=zeros.copy(), is_first=np.ones_like(zeros)
        )

    def actions(self, player: PlayerDV3, random: bool) -> tuple[np.ndarray, np.ndarray]:
        """(what the buffer stores, what the environments receive): random before learning starts, else the
        player's sampled actions."""
        if random:
            sampled = np.asarray(self.envs.action_space.sample())
            if self.is_continuous:
                return sampled, sampled
            return _one_hot_actions(sampled, self.actions_dim, self.n_envs), sampled
        torch_obs = prepare_obs(self.fabric, self.obs, cnn_keys=self.cfg.algo.cnn_keys.encoder, num_envs=self.n_envs)
        acts = player.get_actions(torch_obs)
        return torch.cat(acts, -1).cpu().numpy(), env_actions(acts, self.is_continuous)

    def step(self, rb: EnvIndependentReplayBuffer, player: PlayerDV3, random: bool, metrics: MetricMeans) -> None:
        """Plays one step in every environment and stores the transition; an ended episode also stores its final
        observation (the vector env has already reset it) and restarts the player's state of that environment."""
        stored, actions = self.actions(player, random)
        self.step_data["actions"] = stored.reshape((1, self.n_envs, -1))
        rb.add(self.step_data, validate_args=self.cfg.buffer.validate_args)
        next_obs, rewards, terminated, truncated, infos = self.envs.step(actions.reshape(self.envs.action_space.shape))
        for _, ep_return, ep_length in get_episode_stats(infos):
            metrics.update("Rewards/rew_avg", ep_return)
            metrics.update("Game/ep_len_avg", ep_length)
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
