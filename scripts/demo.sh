#!/usr/bin/env bash
# A small real run: DreamerV3-JEPA on DMC walker-walk from pixels, tiny model, on the CPU (about 1 minute)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-./runs/demo}
.venv/bin/sheeprl exp=dreamer_v3_jepa env=dmc algo.jepa_coef=1.0 algo.jepa_ema=0.996 algo.jepa_mask.erase_frac=0.6 \
  algo.total_steps=512 fabric.accelerator=cpu fabric.precision=32-true \
  algo.dense_units=64 algo.mlp_layers=1 algo.world_model.encoder.cnn_channels_multiplier=8 \
  algo.world_model.recurrent_model.recurrent_state_size=64 algo.world_model.transition_model.hidden_size=64 \
  algo.world_model.representation_model.hidden_size=64 algo.world_model.stochastic_size=8 \
  algo.world_model.discrete_size=8 algo.per_rank_batch_size=8 algo.per_rank_sequence_length=32 \
  algo.jepa_proj_dim=64 algo.jepa_hidden=64 algo.learning_starts=128 algo.eval.every=256 algo.eval.episodes=2 \
  env.num_envs=2 env.max_episode_steps=100 env.capture_video=False buffer.size=4096 \
  log_root="$out" root_dir=. run_name=demo hydra.run.dir="$out/hydra"
