"""The SheepRL overrides of a trial and of a Phase 2 run: one place where the search's settings become SheepRL's."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from jepa_dreamer.presets import COMPILE_KEYS, CPU_RENDER_OVERRIDES, TINY_MODEL_OVERRIDES, output_overrides
from jepa_search.experiments import EXPERIMENTS, env_overrides
from jepa_search.settings import SearchSettings, StudyConfig
from jepa_search.space import to_overrides

# A dry run: the real pipeline with a tiny model, small buffers, short episodes and a light replay ratio, so that the
# seed's dry-run command is quick on two CPU cores (docs/PERFORMANCE.md)
DRY_RUN_OVERRIDES = (
    *TINY_MODEL_OVERRIDES,
    "algo.per_rank_sequence_length=16",
    "env.num_envs=2",
    "env.sync_env=False",
    *CPU_RENDER_OVERRIDES,
    "env.action_repeat=1",
    "env.max_episode_steps=100",
    "algo.learning_starts=256",
    "algo.replay_ratio=0.02",
    "buffer.size=4096",
    "metric.log_every=500",
)


def trial_overrides(
    settings: SearchSettings, params: dict[str, Any], seed: int, trial_dir: Path, steps: int | None = None
) -> list[str]:
    """The SheepRL overrides of one trial: env and task, budget (a trial's, or `steps`), evaluation, JEPA parameters,
    seed, device, compiled route, checkpoints, outputs."""
    overrides = [
        *env_overrides(settings.env, settings.task),
        f"algo.total_steps={settings.trial_steps if steps is None else steps}",
        f"algo.eval.every={settings.eval_every}",
        f"algo.eval.episodes={settings.eval_episodes}",
        *to_overrides({**settings.space.fixed, **params}),
        f"seed={seed}",
        f"fabric.accelerator={settings.device}",
        *(f"{key}={settings.compile == route}" for route, key in COMPILE_KEYS.items()),
        "env.capture_video=False",
        "checkpoint.save_last=False",
        f"checkpoint.every={settings.checkpoint_every}",
        # The newest two: should the newest be unreadable (a disk that filled up), a retry falls back to the other
        "checkpoint.keep_last=2",
        f"metric.log_level={1 if settings.tensorboard else 0}",
    ]
    if settings.trials_per_process > 1:
        # Trials side by side share the process's interpreter: their environments step in processes of their own
        overrides.append("env.sync_env=False")
    if settings.dry_run:
        overrides += DRY_RUN_OVERRIDES
    return [*overrides, *settings.overrides, *output_overrides(str(trial_dir), "run")]


def phase2_overrides(study: StudyConfig, params: dict[str, Any], route: str = "off") -> list[str]:
    """The explicit SheepRL overrides of a configuration's Phase 2 run: full budget, same env, task and extras, and
    the compiled `route` its trial trained with (it computes what the plain step does, faster)."""
    return [
        *env_overrides(study.env, study.task, explicit=False),
        *to_overrides({**params, **study.space.fixed}),
        f"algo.total_steps={study.full_steps}",
        *study.overrides,
        *([f"{COMPILE_KEYS[route]}=True"] if route in COMPILE_KEYS else []),
    ]


def phase2_command(study: StudyConfig, params: dict[str, Any], route: str = "off") -> str:
    return " ".join(
        ["sheeprl", f"exp={EXPERIMENTS[study.env]}", *map(shlex.quote, phase2_overrides(study, params, route))]
    )
