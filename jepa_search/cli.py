"""`search_phase1.py` and the `jepa-search` command: arguments → settings → study → trials until `--n-trials` have
finished (in this process, or in the workers of `--trials-per-device`), or `--report-only`.

Exit codes: 0 done, 2 bad arguments (nothing created), 1 too many failed trials, 75 the database out of reach for
longer than --storage-timeout (the running trial resumes on a rerun), 130/143 interrupted by SIGINT/SIGTERM (the
running trial is recorded as failed and queued again with the same parameters).

The training stack (torch, Lightning, SheepRL: seconds of imports) loads once the arguments are valid, so that
`--help` and a bad argument answer at once.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import optuna
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from jepa_dreamer.presets import render_headless
from jepa_search.experiments import EXPERIMENTS
from jepa_search.overrides import trial_overrides
from jepa_search.parser import build_parser
from jepa_search.progress import Progress, printer
from jepa_search.report import write_report
from jepa_search.settings import SearchSettings, default_storage, mask_password
from jepa_search.storage import EXIT_STORAGE, StorageUnavailable
from jepa_search.study import check_resumable, finished_count, open_study
from jepa_search.validate import UsageError, settings_from_args
from jepa_search.workers import read_worker_spec, registered, run_workers


def check_trial_config(settings: SearchSettings) -> None:
    """Compose the first configuration of the space, so that a bad `--override` key or value fails now."""
    from jepa_dreamer.runner import compose_config

    first = {name: choices[0] for name, choices in settings.space.variable.items()}
    try:
        compose_config(
            trial_overrides(settings, first, settings.seed0, settings.output_dir / "trial_check"),
            exp=EXPERIMENTS[settings.env],
        )
    except (HydraException, OmegaConfBaseException) as e:
        raise UsageError(f"--override: SheepRL rejects the trial configuration ({str(e).splitlines()[0]})") from e


def report_only(args: argparse.Namespace) -> int:
    """`--report-only`: rebuild the artifacts of an existing study, without training."""
    output_dir = Path(args.output_dir).expanduser()
    storage = args.storage or default_storage(output_dir)
    if not args.storage and not (output_dir / "study.db").exists():
        raise UsageError(
            f"--report-only: no study.db in --output-dir {output_dir}; give the folder of a search or --storage"
        )
    try:
        names = optuna.get_all_study_names(storage)
    except Exception as e:
        raise UsageError(f"--storage {mask_password(storage)}: cannot open it ({type(e).__name__})") from e
    name = args.study_name or (names[0] if len(names) == 1 else None)
    if name not in names:
        raise UsageError(f"--report-only: give --study-name, one of: {', '.join(names) or '(no study)'}")
    write_report(optuna.load_study(study_name=name, storage=storage), output_dir)
    print(f"rebuilt the artifacts of {name} in {output_dir}")
    return 0


def search(settings: SearchSettings, progress: Progress) -> int:
    """The study's trials until it has `--n-trials` finished (the workers of `--trials-per-device`, or this
    process), then the confirmation; the exit code."""
    study = open_study(settings)
    progress(
        f"study {settings.study_name}: {finished_count(study)}/{settings.n_trials} finished, "
        f"{settings.trial_steps} steps per trial, {settings.n_evaluations} evaluations (grace "
        f"{settings.grace_evaluations}), storage {mask_password(settings.storage)}"
    )
    if settings.n_workers > 1:
        code = run_workers(study, settings, progress)
        write_report(study, settings.output_dir)
    else:
        from jepa_search.search import run_stages

        with registered(settings):
            code = run_stages(study, settings, progress)
    if code not in (130, 143):
        progress(f"done: {finished_count(study)} finished trials in {settings.study_name} (exit {code})")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    render_headless()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    progress = printer()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if args.report_only:
            return report_only(args)
        if args.worker_spec:  # a worker of a search whose command checked its settings
            settings = read_worker_spec(Path(args.worker_spec))
        else:
            settings = settings_from_args(args)
            check_trial_config(settings)
            check_resumable(settings)
    except UsageError as e:
        print(f"search_phase1.py: error: {e}", file=sys.stderr)
        return 2
    for note in settings.warnings:
        print(f"search_phase1.py: warning: {note}", file=sys.stderr)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    # Heartbeats and retries are marked experimental by Optuna; they are what resuming relies on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        return search(settings, progress)
    except StorageUnavailable as e:
        print(f"search_phase1.py: error: {e}", file=sys.stderr)
        return EXIT_STORAGE
