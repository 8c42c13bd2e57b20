"""Periodic greedy evaluation on environments of its own.

SheepRL's `test()` plays one sampled episode on the training player and resets its states, so it cannot run in the
middle of training. The evaluator here has its own vectorised environments (seeded apart from the training ones) and
its own `PlayerDV3` that shares the trained modules, and it runs inside `torch.random.fork_rng` so that the training
random stream is the same whether or not evaluations happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from sheeprl.algos.dreamer_v3.agent import PlayerDV3
from sheeprl.algos.dreamer_v3.utils import prepare_obs
from sheeprl.utils.compile import compiled_player
from sheeprl.utils.env import get_episode_stats, make_env

from jepa_dreamer import seeds
from jepa_dreamer.envs import env_actions, make_vector_env


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: `episodes` greedy episodes after `policy_step` training steps."""

    index: int
    policy_step: int
    returns: tuple[float, ...]
    lengths: tuple[int, ...]
    seconds: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def min(self) -> float:
        return float(np.min(self.returns))

    @property
    def max(self) -> float:
        return float(np.max(self.returns))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        """The inverse of `as_dict` (checkpoints hold plain dicts: Fabric refuses frozen dataclasses)."""
        return cls(d["index"], d["policy_step"], tuple(d["returns"]), tuple(d["lengths"]), d["seconds"])


# A caller's hook: receives each evaluation; returning True stops the training after it
EvalHook = Callable[[EvalResult], bool]


def episode_quotas(episodes: int, n_envs: int) -> np.ndarray:
    """How many episodes each environment plays: `episodes` split as evenly as possible. Only the first episodes of
    each environment count, so that short episodes are not over-represented."""
    return np.array([episodes // n_envs + (i < episodes % n_envs) for i in range(n_envs)])


class Evaluator:
    """Plays `cfg.algo.eval.episodes` greedy episodes on `min(episodes, cfg.algo.eval.num_envs)` environments."""

    def __init__(
        self,
        fabric: Fabric,
        cfg: dict[str, Any],
        player: PlayerDV3,
        actions_dim: Sequence[int],
        is_continuous: bool,
    ) -> None:
        self.fabric = fabric
        self.cfg = cfg
        self.episodes = int(cfg.algo.eval.episodes)
        self.n_envs = max(1, min(self.episodes, int(cfg.algo.eval.num_envs)))
        self.is_continuous = is_continuous
        self.seed = int(cfg.seed)
        self.envs = make_vector_env(
            cfg,
            [
                make_env(cfg, env_seed, 0, None, "eval", vector_env_idx=i)
                for i, env_seed in enumerate(seeds.evaluation(self.seed, self.n_envs, 0))
            ],
        )
        # Shares the modules (and so the weights) of the training player, not its recurrent states
        self.player = PlayerDV3(
            player.encoder,
            player.rssm,
            player.actor,
            actions_dim,
            self.n_envs,
            cfg.algo.world_model.stochastic_size,
            cfg.algo.world_model.recurrent_model.recurrent_state_size,
            player.device,
            discrete_size=cfg.algo.world_model.discrete_size,
        )
        # Compiled like the training player (`algo.compile`), for this evaluator's own number of environments
        self._get_actions = compiled_player(self.player.get_actions, fabric, cfg, cuda_graphs=False)

    def _env_actions(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        torch_obs = prepare_obs(self.fabric, obs, cnn_keys=self.cfg.algo.cnn_keys.encoder, num_envs=self.n_envs)
        return env_actions(self._get_actions(torch_obs, greedy=True), self.is_continuous)

    def evaluate(self, index: int, policy_step: int) -> EvalResult:
        """Evaluation number `index` (1-based): each one resets its environments with seeds of its own."""
        start = time.perf_counter()
        quotas = episode_quotas(self.episodes, self.n_envs)
        done_count = np.zeros(self.n_envs, dtype=int)
        returns: list[float] = []
        lengths: list[int] = []
        devices = [self.fabric.device] if self.fabric.device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices, device_type=self.fabric.device.type):
            obs = self.envs.reset(seed=seeds.evaluation(self.seed, self.n_envs, index))[0]
            self.player.init_states()
            while (done_count < quotas).any():
                actions = self._env_actions(obs)
                obs, _, _, _, infos = self.envs.step(actions.reshape(self.envs.action_space.shape))
                ended = []
                for i, ep_return, ep_length in get_episode_stats(infos):
                    ended.append(i)
                    if done_count[i] < quotas[i]:
                        returns.append(ep_return)
                        lengths.append(ep_length)
                    done_count[i] += 1
                if ended:
                    self.player.init_states(ended)
        return EvalResult(index, policy_step, tuple(returns), tuple(lengths), time.perf_counter() - start)

    def close(self) -> None:
        self.envs.close()
