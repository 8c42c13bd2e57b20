"""Command-line arguments → validated, frozen `SearchSettings`.

Everything a user can get wrong is checked here, before any folder, database or environment exists: each problem is
one `UsageError` line naming the value and the fix (the CLI prints it and exits with code 2).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jepa_search.space import SearchSpace, SpaceError, load_space

# The default task of each env config name (SheepRL's `configs/env/<name>.yaml`) that the tool supports
DEFAULT_TASKS = {"dmc": "walker_walk", "atari": "PongNoFrameskip-v4"}
# The experiment (jepa_dreamer/configs/exp) each env's trials and Phase 2 run
EXPERIMENTS = {"dmc": "dreamer_v3_jepa", "atari": "dreamer_v3_jepa_atari"}
# The SheepRL key each compiled route of --compile turns on (both off otherwise)
COMPILE_KEYS = {"steps": "algo.compile_steps", "losses": "algo.compile.enabled"}
# The Python package each env needs, and how to get it
ENV_PACKAGES = {"dmc": ("dm_control", "pip install dm-control==1.0.50"), "atari": ("ale_py", "pip install ale-py")}
# Overrides the tool sets itself: passing them through --override would silently break the search
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
# `--trials-per-device auto` on a GPU: K=4 trials gave 4.03x one trial's throughput on an H200, K=8 about 5x (a
# trial keeps one core busy, its 4 environment processes and its compilation use more; model S peaked at 2.95 GiB
# of tensors, plus its CUDA context): docs/PERFORMANCE.md
AUTO_TRIALS_PER_GPU = 4
CORES_PER_TRIAL = 4
GIB_PER_TRIAL = 4
# What each objective of --objectives optimises, and the results.json key it is read from
OBJECTIVES = {"return": "maximize", "wall_time": "minimize", "peak_gpu_memory": "minimize"}
OBJECTIVE_KEYS = {"return": "objective", "wall_time": "wall_time_s", "peak_gpu_memory": "peak_memory_mib"}


class UsageError(ValueError):
    """A bad argument: the message is the one line the user sees."""


@dataclass(frozen=True)
class SearchSettings:
    """What the search does. `fingerprint()` is what a resumed study must agree with."""

    env: str
    task: str
    full_steps: int
    fidelity_frac: float
    n_trials: int
    eval_every: int
    eval_episodes: int
    output_dir: Path
    storage: str
    study_name: str
    space: SearchSpace
    sampler: str = "random"
    pruner: str = "hyperband"
    grace_frac: float = 0.25
    seed0: int = 0
    dry_run: bool = False
    device: str = "auto"
    overrides: tuple[str, ...] = ()
    wandb_project: str | None = None
    tensorboard: bool = False
    isolation: str = "inprocess"
    heartbeat_interval: int = 60
    max_retries: int = 2
    checkpoint_every: int = 0
    compile: str = "off"
    trials_per_device: int = 1
    gpus: tuple[int, ...] = ()
    objectives: tuple[str, ...] = ("return",)
    control: bool = True
    confirm_top_k: int = 0
    confirm_seeds: int = 3
    confirm_steps: int = 0
    confirm_only: bool = False
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def trial_steps(self) -> int:
        """Each trial's budget in policy steps (SheepRL's `algo.total_steps` unit)."""
        return round(self.fidelity_frac * self.full_steps)

    @property
    def n_workers(self) -> int:
        """Trials at once: `trials_per_device` on each GPU of `gpus`, or on the CPU when there are none."""
        return self.trials_per_device * max(1, len(self.gpus))

    @property
    def n_evaluations(self) -> int:
        """Evaluations per trial: every `eval_every` steps, and one at the end when the budget is not a multiple."""
        return math.ceil(self.trial_steps / self.eval_every)

    @property
    def grace_evaluations(self) -> int:
        """No pruning before this many evaluations (`grace_frac` of them, at least one)."""
        return max(1, math.ceil(self.grace_frac * self.n_evaluations))

    @property
    def directions(self) -> list[str]:
        """One Optuna direction per objective; several make a multi-objective study (never pruned)."""
        return [OBJECTIVES[name] for name in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def confirm_evaluations(self) -> int:
        """Evaluations per confirmation run (at `confirm_steps`)."""
        return math.ceil(self.confirm_steps / self.eval_every)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that define the study: a resume with other values would mix incomparable trials."""
        keys = (
            "env",
            "task",
            "full_steps",
            "fidelity_frac",
            "eval_every",
            "eval_episodes",
            "sampler",
            "pruner",
            "grace_frac",
            "seed0",
            "dry_run",
            "overrides",
            "objectives",
            "control",
        )
        d = {k: getattr(self, k) for k in keys}
        d["overrides"] = list(self.overrides)
        d["objectives"] = list(self.objectives)
        d["space"] = self.space.as_dict()
        return d

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            output_dir=str(self.output_dir),
            space=self.space.as_dict(),
            storage=mask_password(self.storage),
            trial_steps=self.trial_steps,
            n_evaluations=self.n_evaluations,
            grace_evaluations=self.grace_evaluations,
        )
        d.pop("warnings")
        return d


def mask_password(url: str) -> str:
    """The storage URL with its password replaced by ***, for logs and artifacts."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="search_phase1.py",
        description="Phase 1 search over the JEPA hyperparameters of DreamerV3 (Optuna, pruned on evaluation returns).",
    )
    p.add_argument(
        "--env", help="SheepRL env config name: dmc (tested default) or atari (required unless --report-only)"
    )
    p.add_argument("--task", help="task of the env: DMC domain_task (default walker_walk) or an Atari id")
    p.add_argument("--full-steps", type=int, help="Phase 2 budget in policy steps (algo.total_steps); required")
    p.add_argument("--fidelity-frac", type=float, default=0.15, help="fraction of --full-steps per trial")
    p.add_argument("--n-trials", type=int, default=20, help="finished (complete or pruned) trials to reach")
    p.add_argument("--eval-every", type=int, default=10000, help="evaluate every N policy steps")
    p.add_argument("--eval-episodes", type=int, default=10, help="greedy episodes per evaluation")
    p.add_argument("--output-dir", default="./runs/phase1", help="folder of the study's files")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///<output-dir>/study.db)")
    p.add_argument("--study-name", help="study name (default derived from env, task and --dry-run)")
    p.add_argument("--search-space", help="YAML search space (default configs/search_space.yaml)")
    p.add_argument("--sampler", choices=["random", "tpe"], default="random")
    p.add_argument(
        "--pruner",
        choices=["hyperband", "asha", "none"],
        default="hyperband",
        help="early stopping of lagging trials; off with several --objectives (Optuna cannot prune those)",
    )
    p.add_argument("--grace-frac", type=float, default=0.25, help="no pruning before this fraction of evaluations")
    p.add_argument("--seed0", type=int, default=0, help="trial seed = seed0 + trial number")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where trials train")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="SheepRL override for every trial (e.g. algo.per_rank_batch_size=8 env.num_envs=2)",
    )
    p.add_argument(
        "--isolation",
        choices=["inprocess", "subprocess"],
        default="inprocess",
        help="run each trial in this process or in a child process (train_wrapper.py)",
    )
    p.add_argument("--wandb-project", help="log every trial to this W&B project")
    p.add_argument("--tensorboard", action="store_true", help="TensorBoard event files in every trial folder")
    p.add_argument("--dry-run", action="store_true", help="the real pipeline with a tiny model: a quick check")
    p.add_argument("--heartbeat-interval", type=int, default=60, help="seconds; a trial silent for 2x is stale")
    p.add_argument("--max-retries", type=int, default=2, help="retries of a failed or interrupted trial")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        help="policy steps between a trial's checkpoints (default: --eval-every; 0: none); a retried "
        "trial resumes from its last one",
    )
    p.add_argument(
        "--compile",
        choices=["auto", "off", "steps", "losses"],
        default="auto",
        help="compiled training step. auto: steps on a GPU, off on the CPU. steps: ours, one step of each recurrent "
        "loop compiled (1.45x the plain step's speed on an H200, about 35 s of compilation per trial process; no "
        "gain on a CPU). losses: SheepRL's algo.compile with CUDA graphs (still compiling after 6 minutes on an "
        "H200). docs/PERFORMANCE.md",
    )
    p.add_argument(
        "--trials-per-device",
        default="auto",
        help="trials at once on each GPU (or on the CPU): one worker process each, all on one study. auto: "
        f"{AUTO_TRIALS_PER_GPU} per GPU (4 gave 4.03x one trial's throughput on an H200), fewer where there are "
        f"under {CORES_PER_TRIAL} CPU cores or {GIB_PER_TRIAL} GiB of GPU memory per trial; 1 on the CPU",
    )
    p.add_argument(
        "--gpus",
        help="comma-separated CUDA device ids to spread the workers over (default: every visible GPU when "
        "--device is auto or cuda)",
    )
    p.add_argument(
        "--objectives",
        default="return",
        help="comma-separated, return first: return (maximised), wall_time, peak_gpu_memory (minimised); several "
        "make a multi-objective study, which is not pruned",
    )
    p.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        help="do not train the control (jepa_coef 0, plain DreamerV3), which otherwise is one of the --n-trials",
    )
    p.add_argument(
        "--confirm-top-k",
        type=int,
        default=0,
        metavar="K",
        help="after the search, train the K best configurations and the control again on fresh seeds",
    )
    p.add_argument(
        "--confirm-seeds", type=int, metavar="S", help="seeds per confirmed configuration (default 3, at least 2)"
    )
    p.add_argument(
        "--confirm-steps", type=int, metavar="N", help="policy steps per confirmation run (default: a trial's budget)"
    )
    p.add_argument(
        "--confirm-only",
        action="store_true",
        help="run only the confirmation, on the existing study of the same command (no new search trials)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild results.csv, topk.json, best_config.yaml, SUMMARY.md and plots from the study, no training",
    )
    return p


def _positive(name: str, value: int | float) -> None:
    if value <= 0:
        raise UsageError(f"{name} {value} must be positive")


def _check_output_dir(path: Path) -> None:
    """The folder must be creatable and writable, without creating it here."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output-dir {path} is a file; give a folder path")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {path}: {probe} is not writable; choose a folder you can write to")


def _check_env(env: str, task: str) -> None:
    if env not in DEFAULT_TASKS:
        raise UsageError(f"--env {env} is not supported; use one of: {', '.join(DEFAULT_TASKS)}")
    module, install = ENV_PACKAGES[env]
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"--env {env} needs the Python package {module}: {install}")
    if env == "dmc":
        from dm_control import suite

        domain, _, name = task.partition("_")
        known = {f"{d}_{t}" for d, t in suite.ALL_TASKS}
        if (domain, name) not in suite.ALL_TASKS:
            raise UsageError(f"--task {task} is not a DMC task; e.g. {', '.join(sorted(known)[:4])}, ...")
    else:
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
        if task not in gym.registry:
            raise UsageError(f"--task {task} is not a registered Atari id; e.g. PongNoFrameskip-v4")


def _check_storage(storage: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(storage)
    except ArgumentError as e:
        raise UsageError(f"--storage {mask_password(storage)} is not a database URL; e.g. sqlite:///study.db") from e
    if url.get_backend_name() not in ("sqlite", "postgresql", "mysql"):
        raise UsageError(f"--storage {mask_password(storage)}: use a sqlite:///, postgresql:// or mysql:// URL")
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise UsageError(
                f"--storage {storage}: give a file, e.g. sqlite:///runs/study.db (memory is not resumable)"
            )
        db = Path(url.database)
        if db.exists() and db.is_file() and db.stat().st_size > 0:
            with db.open("rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise UsageError(
                        f"--storage {storage}: {db} is not an SQLite database; move it away or fix the path"
                    )


def _check_overrides(overrides: list[str]) -> tuple[str, ...]:
    for o in overrides:
        key, eq, _ = o.partition("=")
        if not eq or not key:
            raise UsageError(f"--override {o!r} must look like KEY=VALUE, e.g. algo.per_rank_batch_size=8")
        bare = key.lstrip("+~")
        for reserved in RESERVED_OVERRIDES:
            if (
                bare == reserved.rstrip(".")
                or (reserved.endswith(".") and bare.startswith(reserved))
                or (reserved.endswith("_") and bare.startswith(reserved))
            ):
                raise UsageError(f"--override {o!r}: {bare} is set by the search itself; use its own flag instead")
    return tuple(overrides)


def _check_trials_per_device(value: str, gpus: tuple[int, ...]) -> int:
    """A positive count, or `auto`: as many trials per GPU as fill it without running short of CPU cores or of
    the smallest GPU's memory."""
    if value == "auto":
        if not gpus:
            return 1
        import torch

        by_cores = (os.cpu_count() or 1) // (CORES_PER_TRIAL * len(gpus))
        by_memory = min(torch.cuda.get_device_properties(g).total_memory for g in gpus) // (GIB_PER_TRIAL << 30)
        return max(1, min(AUTO_TRIALS_PER_GPU, by_cores, by_memory))
    try:
        count = int(value)
    except ValueError:
        raise UsageError(f"--trials-per-device {value!r} must be a whole number or auto, e.g. 4") from None
    _positive("--trials-per-device", count)
    return count


def _resolve_compile(choice: str, gpus: tuple[int, ...]) -> str:
    """`auto`: the fastest numerically sound route measured on the device the trials train on (docs/PERFORMANCE.md):
    our compiled steps on a GPU; on a CPU the plain step, as fast there and without the compilation."""
    if choice != "auto":
        return choice
    return "steps" if gpus else "off"


def _check_gpus(device: str, gpus: str | None) -> tuple[int, ...]:
    """The GPUs the workers use: the ones named, else every visible one unless --device cpu."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and visible == 0:
        raise UsageError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    if gpus is None:
        return tuple(range(visible)) if device != "cpu" else ()
    if device == "cpu":
        raise UsageError(f"--gpus {gpus} with --device cpu: drop --gpus or use --device cuda")
    try:
        ids = tuple(int(g) for g in gpus.split(","))
    except ValueError:
        raise UsageError(f"--gpus {gpus!r} must be comma-separated device ids, e.g. --gpus 0,1") from None
    if visible == 0:
        raise UsageError(f"--gpus {gpus}: no CUDA GPU is visible; drop --gpus to train on the CPU")
    bad = [g for g in ids if not 0 <= g < visible]
    if bad or len(set(ids)) != len(ids):
        raise UsageError(f"--gpus {gpus}: {visible} GPU(s) are visible (ids 0-{visible - 1}); name each once")
    return ids


def _check_objectives(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    for name in names:
        if name not in OBJECTIVES:
            raise UsageError(f"--objectives {text}: unknown objective {name!r}; use some of: {', '.join(OBJECTIVES)}")
    if names[0] != "return" or len(set(names)) != len(names):
        raise UsageError(f"--objectives {text}: list return first and each objective once, e.g. return,wall_time")
    return names


def _check_confirmation(args: argparse.Namespace, budget: int, space_size: int) -> tuple[int, int]:
    """The confirmation's seeds and steps; the flags only make sense with --confirm-top-k."""
    if args.confirm_top_k < 0:
        raise UsageError(f"--confirm-top-k {args.confirm_top_k} must be 0 (no confirmation) or more")
    if not args.confirm_top_k:
        for flag, value in (
            ("--confirm-seeds", args.confirm_seeds),
            ("--confirm-steps", args.confirm_steps),
            ("--confirm-only", args.confirm_only or None),
        ):
            if value is not None:
                raise UsageError(f"{flag} needs --confirm-top-k K (how many configurations to confirm)")
        return 3, budget
    if args.confirm_top_k > space_size:
        raise UsageError(
            f"--confirm-top-k {args.confirm_top_k} exceeds the {space_size} configurations of the search space; "
            f"use {space_size} or less"
        )
    seeds = 3 if args.confirm_seeds is None else args.confirm_seeds
    if seeds < 2:
        raise UsageError(f"--confirm-seeds {seeds}: a confidence interval needs at least 2 seeds")
    steps = budget if args.confirm_steps is None else args.confirm_steps
    if not args.eval_every <= steps <= args.full_steps:
        raise UsageError(
            f"--confirm-steps {steps} must be between --eval-every ({args.eval_every}) and --full-steps "
            f"({args.full_steps})"
        )
    return seeds, steps


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    """Validate every argument; raise `UsageError` on the first bad one. Creates nothing."""
    for flag, value in (("--env", args.env), ("--full-steps", args.full_steps)):
        if value is None:
            raise UsageError(f"{flag} is required (e.g. --env dmc --full-steps 1000000)")
    _positive("--full-steps", args.full_steps)
    if not 0 < args.fidelity_frac <= 1:
        raise UsageError(f"--fidelity-frac {args.fidelity_frac} must be in (0, 1]; 0.1-0.2 is typical")
    notes = []
    if not 0.1 <= args.fidelity_frac <= 0.2:
        notes.append(f"--fidelity-frac {args.fidelity_frac} is outside the usual 0.1-0.2")
    _positive("--n-trials", args.n_trials)
    _positive("--eval-every", args.eval_every)
    _positive("--eval-episodes", args.eval_episodes)
    _positive("--heartbeat-interval", args.heartbeat_interval)
    if args.max_retries < 0:
        raise UsageError(f"--max-retries {args.max_retries} must be 0 or more")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise UsageError(f"--checkpoint-every {args.checkpoint_every} must be 0 (none) or a number of steps")
    budget = round(args.fidelity_frac * args.full_steps)
    if budget < 1:
        raise UsageError(f"--fidelity-frac {args.fidelity_frac} x --full-steps {args.full_steps} is under one step")
    if args.eval_every > budget:
        raise UsageError(
            f"--eval-every {args.eval_every} is longer than a trial ({budget} steps = --fidelity-frac x --full-steps); "
            f"use --eval-every {max(1, budget // 4)} or less"
        )
    if not 0.2 <= args.grace_frac <= 0.3:
        raise UsageError(f"--grace-frac {args.grace_frac} must be in [0.2, 0.3]")
    task = args.task or DEFAULT_TASKS.get(args.env, "")
    _check_env(args.env, task)
    output_dir = Path(args.output_dir).expanduser()
    _check_output_dir(output_dir)
    storage = args.storage or f"sqlite:///{(output_dir / 'study.db').resolve()}"
    _check_storage(storage)
    gpus = _check_gpus(args.device, args.gpus)
    trials_per_device = _check_trials_per_device(args.trials_per_device, gpus)
    try:
        space = load_space(args.search_space)
    except SpaceError as e:
        raise UsageError(str(e)) from e
    if args.control and args.n_trials < 2:
        raise UsageError(
            f"--n-trials {args.n_trials} leaves no trial besides the control; use --n-trials 2 or more, or --no-control"
        )
    if args.n_trials > space.size() + args.control:
        notes.append(
            f"--n-trials {args.n_trials} exceeds the {space.size()} configurations of the search space"
            + (" and the control" if args.control else "")
            + ": each is trained once, then the search stops"
        )
    objectives = _check_objectives(args.objectives)
    pruner = args.pruner
    if len(objectives) > 1:
        notes.append(f"--objectives {args.objectives}: Optuna does not prune multi-objective studies; pruning is off")
        pruner = "none"
    confirm_seeds, confirm_steps = _check_confirmation(args, budget, space.size())
    study_name = args.study_name or f"jepa-phase1-{args.env}-{task}" + ("-dry-run" if args.dry_run else "")
    if args.dry_run and args.study_name and not args.study_name.endswith("-dry-run"):
        raise UsageError(f"--study-name {args.study_name}: a dry run's study name must end in -dry-run")
    return SearchSettings(
        env=args.env,
        task=task,
        full_steps=args.full_steps,
        fidelity_frac=args.fidelity_frac,
        n_trials=args.n_trials,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        output_dir=output_dir,
        storage=storage,
        study_name=study_name,
        space=space,
        sampler=args.sampler,
        pruner=pruner,
        grace_frac=args.grace_frac,
        seed0=args.seed0,
        dry_run=args.dry_run,
        device=args.device,
        overrides=_check_overrides(args.override),
        wandb_project=args.wandb_project,
        tensorboard=args.tensorboard,
        isolation=args.isolation,
        heartbeat_interval=args.heartbeat_interval,
        max_retries=args.max_retries,
        checkpoint_every=args.eval_every if args.checkpoint_every is None else args.checkpoint_every,
        compile=_resolve_compile(args.compile, gpus),
        trials_per_device=trials_per_device,
        gpus=gpus,
        objectives=objectives,
        control=args.control,
        confirm_top_k=args.confirm_top_k,
        confirm_seeds=confirm_seeds,
        confirm_steps=confirm_steps,
        confirm_only=args.confirm_only,
        warnings=tuple(notes),
    )
