"""Measure the ratio of encoder gradient norms, JEPA over the DreamerV3 world-model loss, at initialisation.

Real DMC walker frames (64x64 pixels, random actions), a batch of 8 sequences x 32 steps, `jepa_coef: 1`:
    MUJOCO_GL=egl python bench/grad_ratio.py --size S
The training loop logs the same number (`Grads/encoder_jepa_over_recon`) once per logging interval.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.fabric import Fabric  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sheeprl.utils.env import make_env  # noqa: E402
from sheeprl.utils.utils import dotdict  # noqa: E402

from jepa_dreamer.learner import Learner  # noqa: E402
from jepa_dreamer.runner import compose_config  # noqa: E402

SIZES = {
    "XS": [
        "algo.dense_units=256",
        "algo.mlp_layers=1",
        "algo.world_model.encoder.cnn_channels_multiplier=24",
        "algo.world_model.recurrent_model.recurrent_state_size=256",
        "algo.world_model.transition_model.hidden_size=256",
        "algo.world_model.representation_model.hidden_size=256",
    ],
    "S": [],  # the experiment's own size
}


def real_batch(cfg: dotdict, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """`batch` sequences of `length` consecutive steps of one walker episode each, with random actions."""
    env = make_env(cfg, seed, 0, None, "grad_ratio")()
    sequences = []
    for b in range(batch):
        obs = env.reset(seed=seed + b)[0]
        rows = []
        for _ in range(length):
            action = env.action_space.sample()
            rows.append((obs["rgb"], action))
            obs, reward, *_ = env.step(action)
            rows[-1] += (reward,)
        sequences.append(rows)
    env.close()
    as_t = lambda i: torch.as_tensor(np.array([[r[i] for r in s] for s in sequences]), dtype=torch.float32)  # noqa: E731
    rgb, actions, rewards = as_t(0), as_t(1), as_t(2)
    zeros = torch.zeros(length, batch, 1)
    return {
        "rgb": rgb.transpose(0, 1),
        "actions": actions.transpose(0, 1),
        "rewards": rewards.T[..., None],
        "terminated": zeros,
        "truncated": zeros.clone(),
        "is_first": zeros.clone(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="S")
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = dotdict(
        OmegaConf.to_container(
            compose_config(
                ["fabric.accelerator=cpu", "fabric.precision=32-true", "algo.jepa_coef=1.0", *SIZES[args.size]]
            ),
            resolve=True,
        )
    )
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    env = make_env(cfg, 0, 0, None, "probe")()
    learner = Learner(fabric, cfg, env.observation_space, env.action_space.shape, True)
    env.close()
    ratios = []
    for i in range(args.batches):
        data = real_batch(cfg, batch=8, length=32, seed=100 * i)
        # Measured before the step's update: fresh weights for the first batch, after i updates for the next ones
        _, _, metrics = learner.world_model_step(data, measure_ratio=True)
        ratios.append(metrics["Grads/encoder_jepa_over_recon"].item())
    print(
        f"size={args.size} proj_dim={cfg.algo.jepa_proj_dim} ratio per batch: " + ", ".join(f"{r:.3f}" for r in ratios)
    )


if __name__ == "__main__":
    main()
