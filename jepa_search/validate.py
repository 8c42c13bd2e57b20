"""Command-line arguments → validated `SearchSettings`.

Everything a user can get wrong is checked here, before any folder, database or environment exists: each problem is
one `UsageError` line naming the value and the fix (the CLI prints it and exits with code 2).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from jepa_search.experiments import DEFAULT_TASKS, ENV_PACKAGES, is_reserved
from jepa_search.host import auto_trials_per_gpu, visible_gpus
from jepa_search.results import OBJECTIVES
from jepa_search.settings import SearchSettings, default_storage, mask_password
from jepa_search.space import SpaceError, load_space


class UsageError(ValueError):
    """A bad argument: the message is the one line the user sees."""


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


def _check_wandb(project: str | None) -> None:
    """W&B online needs credentials: without them every trial would fail at its start. Read locally (no request: a
    cluster's compute nodes are often offline), and only when asked for (importing W&B takes a second)."""
    if project is None:
        return
    import wandb

    if wandb.setup().settings.mode in ("offline", "dryrun", "disabled"):
        return
    fix = "set WANDB_MODE=offline to log to files (`wandb sync` them later)"
    try:
        logged_in = wandb.login(prompt=False, verify=False)
    except wandb.errors.AuthenticationError as e:
        raise UsageError(f"--wandb-project {project}: {e}; fix it, or {fix}") from None
    if not logged_in:
        raise UsageError(f"--wandb-project {project}: W&B has no API key here; run `wandb login`, or {fix}")


def _check_overrides(overrides: list[str]) -> tuple[str, ...]:
    for o in overrides:
        key, eq, _ = o.partition("=")
        if not eq or not key:
            raise UsageError(f"--override {o!r} must look like KEY=VALUE, e.g. algo.per_rank_batch_size=8")
        if is_reserved(key):
            raise UsageError(
                f"--override {o!r}: {key.lstrip('+~')} is set by the search itself; use its own flag instead"
            )
    return tuple(overrides)


def _check_arrangement(args: argparse.Namespace, gpus: tuple[int, ...], objectives: tuple[str, ...]) -> tuple[int, int]:
    """Trials at once on each device, and how many of them share a process (`--trials-per-process`, a divisor).
    `--trials-per-device auto`: as many trials per GPU as fill it without running short of CPU cores or of the
    smallest GPU's memory, and at least one process's worth."""
    per_process = args.trials_per_process
    _positive("--trials-per-process", per_process)
    if args.trials_per_device == "auto":
        per_device = max(auto_trials_per_gpu(gpus), per_process)
        per_device -= per_device % per_process
    else:
        try:
            per_device = int(args.trials_per_device)
        except ValueError:
            raise UsageError(
                f"--trials-per-device {args.trials_per_device!r} must be a whole number or auto, e.g. 4"
            ) from None
        _positive("--trials-per-device", per_device)
    if per_device % per_process:
        fixed = per_device + per_process - per_device % per_process
        raise UsageError(
            f"--trials-per-process {per_process} must divide --trials-per-device {per_device} (the processes on a "
            f"device each train as many); e.g. --trials-per-device {fixed}"
        )
    if per_process > 1 and args.isolation == "subprocess":
        raise UsageError(
            f"--trials-per-process {per_process} trains trials in threads of one process, --isolation subprocess each "
            f"in a process of its own: use --trials-per-device {per_device} with --trials-per-process 1 instead"
        )
    if per_process > 1 and "peak_gpu_memory" in objectives:
        raise UsageError(
            "--objectives peak_gpu_memory: trials that share a process share its peak memory; use "
            "--trials-per-process 1"
        )
    return per_device, per_process


def _resolve_compile(choice: str, gpus: tuple[int, ...]) -> str:
    """`auto`: the fastest numerically sound route measured on the device the trials train on (docs/PERFORMANCE.md):
    our compiled steps on a GPU; on a CPU the plain step, as fast there and without the compilation."""
    if choice != "auto":
        return choice
    return "steps" if gpus else "off"


def _check_gpus(device: str, gpus: str | None) -> tuple[int, ...]:
    """The GPUs the workers use: the ones named, else every visible one unless --device cpu."""
    visible = visible_gpus()
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
    _positive("--storage-timeout", args.storage_timeout)
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
    storage = args.storage or default_storage(output_dir)
    _check_storage(storage)
    _check_wandb(args.wandb_project)
    gpus = _check_gpus(args.device, args.gpus)
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
    trials_per_device, trials_per_process = _check_arrangement(args, gpus, objectives)
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
        storage_timeout=args.storage_timeout,
        max_retries=args.max_retries,
        checkpoint_every=args.eval_every if args.checkpoint_every is None else args.checkpoint_every,
        compile=_resolve_compile(args.compile, gpus),
        trials_per_device=trials_per_device,
        trials_per_process=trials_per_process,
        gpus=gpus,
        objectives=objectives,
        control=args.control,
        confirm_top_k=args.confirm_top_k,
        confirm_seeds=confirm_seeds,
        confirm_steps=confirm_steps,
        confirm_only=args.confirm_only,
        warnings=tuple(notes),
    )
