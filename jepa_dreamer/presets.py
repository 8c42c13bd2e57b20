"""Named sets of config keys and overrides that callers of the algorithm use without loading it (no torch here): the
compiled routes' keys, a model small enough for a CPU and a scene cheap to draw on one, the outputs of a run under one
folder; and headless rendering, which entry points set before anything loads MuJoCo."""

import os

# The compiled routes of a gradient step and the key that turns each on (all off: the plain step). `steps`, `graph`
# and `fused` are ours (`jepa_dreamer/compiled.py`, `graphed.py`, `fused.py`), `losses` SheepRL's `algo.compile`
COMPILE_KEYS = {
    "steps": "algo.compile_steps",
    "losses": "algo.compile.enabled",
    "graph": "algo.compile_graph",
    "fused": "algo.compile_fused",
}
# The routes whose whole step is captured as a CUDA graph after eager warm-up steps (`jepa_dreamer/graphed.py`)
CAPTURED_ROUTES = ("graph", "fused")

# A model small enough for end-to-end runs on a CPU
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

# DMC drawn without shadows or anti-aliasing: most of a CPU's time per 64x64 frame (docs/PERFORMANCE.md)
CPU_RENDER_OVERRIDES: tuple[str, ...] = ("env.shadow_size=0", "env.render_samples=0")


def output_overrides(folder: str, run_name: str) -> list[str]:
    """Overrides that put every output of a run (logs, checkpoints, buffers, videos, configs) under `folder`."""
    return [f"log_root={folder}", f"run_name={run_name}", "root_dir=."]


def render_headless() -> None:
    """MuJoCo renders through EGL unless told otherwise: no display needed. It picks its backend when dm_control is
    first imported, so every entry point calls this before anything creates an environment."""
    os.environ.setdefault("MUJOCO_GL", "egl")
