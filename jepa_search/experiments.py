"""What the search tells SheepRL about the environment: the env configs it supports (default task, experiment,
package), how an env and task become overrides, and the overrides the search reserves for itself."""

from __future__ import annotations

from jepa_dreamer.presets import COMPILE_KEYS

# The default task of each env config name (SheepRL's `configs/env/<name>.yaml`) that the tool supports
DEFAULT_TASKS = {"dmc": "walker_walk", "atari": "PongNoFrameskip-v4"}
# The experiment (jepa_dreamer/configs/exp) each env's trials and Phase 2 run
EXPERIMENTS = {"dmc": "dreamer_v3_jepa", "atari": "dreamer_v3_jepa_atari"}
# The Python package each env needs, and how to get it
ENV_PACKAGES = {"dmc": ("dm_control", "pip install dm-control==1.0.50"), "atari": ("ale_py", "pip install ale-py")}
# Overrides the search sets itself: passing them through --override would silently break the search
RESERVED_OVERRIDES = (
    "algo.total_steps",
    "algo.eval.",
    "seed",
    "log_root",
    "run_name",
    "root_dir",
    "exp",
    "env",
    "checkpoint.resume_from",
    "fabric.accelerator",
    "algo.jepa_",
    *COMPILE_KEYS.values(),
)


def env_overrides(env: str, task: str, explicit: bool = True) -> list[str]:
    """The env config and its task. `explicit=False` leaves out the task when the experiment's default is it (the
    shorter Phase 2 command)."""
    overrides = [f"env={env}"]
    if not explicit and env == "dmc" and task == DEFAULT_TASKS[env]:
        return overrides
    if env == "dmc":
        domain, _, name = task.partition("_")
        return [*overrides, f"env.wrapper.domain_name={domain}", f"env.wrapper.task_name={name}"]
    return [*overrides, f"env.id={task}"]


def is_reserved(key: str) -> bool:
    """Whether an override key is one the search sets itself (`+` and `~` prefixes included)."""
    bare = key.lstrip("+~")
    return any(
        bare == reserved.rstrip(".") or (reserved.endswith((".", "_")) and bare.startswith(reserved))
        for reserved in RESERVED_OVERRIDES
    )
