"""The command line of `search_phase1.py`: every flag, its default and its help. Validation is `settings.py`'s."""

from __future__ import annotations

import argparse

from jepa_search.host import AUTO_TRIALS_PER_GPU, CORES_PER_TRIAL, GIB_PER_TRIAL


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
    p.add_argument(
        "--storage-timeout",
        type=float,
        default=300.0,
        help="seconds a worker keeps retrying a lost database connection before it stops (exit 75)",
    )
    p.add_argument("--max-retries", type=int, default=2, help="retries of a failed or interrupted trial")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        help="policy steps between a trial's checkpoints (default: --eval-every; 0: none); a retried "
        "trial resumes from its last one",
    )
    p.add_argument(
        "--compile",
        choices=["auto", "off", "steps", "graph", "fused", "losses"],
        default="auto",
        help="compiled training step (docs/PERFORMANCE.md). auto: steps on a GPU, off on the CPU. steps: ours, one "
        "step of each recurrent loop compiled, on one concatenation of its weights (2.5x fewer kernel launches per "
        "gradient step). graph: ours, the whole gradient step captured and replayed as one CUDA graph (not measured "
        "on a GPU yet; on a CPU the same step without a graph). fused: ours, the graph route with every part of the "
        "step compiled first (fewer, fused kernels; not measured on a GPU yet). losses: SheepRL's algo.compile (whole "
        "losses, CUDA graphs; minutes of compilation)",
    )
    p.add_argument(
        "--trials-per-device",
        default="auto",
        help="trials at once on each GPU (or on the CPU), in worker processes of --trials-per-process trials, all on "
        "one study. auto: "
        f"{AUTO_TRIALS_PER_GPU} per GPU (docs/PERFORMANCE.md), fewer where there are under {CORES_PER_TRIAL} CPU "
        f"cores or {GIB_PER_TRIAL} GiB of GPU memory per trial; 1 on the CPU",
    )
    p.add_argument(
        "--trials-per-process",
        type=int,
        default=1,
        help="of the trials on a device, how many share one worker process, each training in a thread and on a CUDA "
        "stream of its own: kernels of one process overlap on a GPU, those of different processes take turns. Must "
        "divide --trials-per-device (default 1: a process per trial)",
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
    p.add_argument(
        "--worker-spec",
        metavar="PATH",
        help="run as one worker of a search, from the spec its command wrote (--trials-per-device starts these); "
        "every other flag is ignored",
    )
    return p
