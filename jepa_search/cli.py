"""`search_phase1.py`: arguments → settings → study → trials until `--n-trials` have finished.

Exit codes: 0 done, 2 bad arguments (nothing created), 1 too many failed trials, 130/143 interrupted by
SIGINT/SIGTERM (the running trial is recorded as failed and queued again with the same parameters).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from jepa_dreamer.runner import compose_config
from jepa_search.confirm import ConfirmObjective, run_confirmation
from jepa_search.objective import Objective
from jepa_search.report import write_report
from jepa_search.sampler import untried_keys
from jepa_search.settings import (
    EXPERIMENTS,
    SearchSettings,
    UsageError,
    build_parser,
    mask_password,
    settings_from_args,
)
from jepa_search.study import (
    FINISHED,
    NOT_TRAINED_ATTR,
    check_resumable,
    finished_count,
    open_confirm_study,
    open_study,
    retry_callback,
)
from jepa_search.trial import trial_overrides
from jepa_search.workers import WORKER_ENV, run_workers


def check_trial_config(settings: SearchSettings) -> None:
    """Compose the first configuration of the space, so that a bad `--override` key or value fails now."""
    first = {name: choices[0] for name, choices in settings.space.variable.items()}
    try:
        compose_config(
            trial_overrides(settings, first, settings.seed0, settings.output_dir / "trial_check"),
            exp=EXPERIMENTS[settings.env],
        )
    except (HydraException, OmegaConfBaseException) as e:
        raise UsageError(f"--override: SheepRL rejects the trial configuration ({str(e).splitlines()[0]})") from e


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that `finally` blocks run and Optuna records the running trial as failed."""


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def _printer(stream=None) -> Callable[[str], None]:
    stream = stream or sys.stdout
    worker = os.environ.get(WORKER_ENV)
    prefix = f" {worker}" if worker else ""

    def progress(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}{prefix}] {line}", file=stream, flush=True)

    return progress


def run_search(study: optuna.Study, settings: SearchSettings, objective: Objective) -> int:
    """Run trials until `n_trials` are finished (complete or pruned) in the study, counting every worker's and the
    control, or until every configuration of the space has been tried."""
    progress = objective.progress
    retry = retry_callback(settings)
    failures = 0

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal failures
        if trial.state == TrialState.FAIL:
            failures += 1
            if not trial.user_attrs.get(NOT_TRAINED_ATTR):
                retry(study, trial)  # queued again with the same parameters, up to --max-retries times
        done = study.get_trials(deepcopy=False, states=FINISHED)
        pruned = sum(t.state == TrialState.PRUNED for t in done)
        seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done if t.datetime_start]
        left = sum(seconds) / len(seconds) * max(0, settings.n_trials - len(done)) if seconds else 0.0
        progress(
            f"trial {trial.number} {trial.state.name.lower()}"
            + (f" values {', '.join(f'{v:.2f}' for v in trial.values)}" if trial.values else "")
            + f"; finished {len(done)}/{settings.n_trials} ({pruned} pruned), about {left / 3600:.1f} h left"
        )
        write_report(study, settings.output_dir)

    while True:
        # A trial whose worker died is failed (and queued again) now, not only when a worker starts a trial
        fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        # Trials other workers are running count, so several workers stop together at n_trials (or a few more, when
        # two of them start a trial at the same moment)
        if len(trials) >= settings.n_trials:
            break
        # No duplicates: once every configuration has a trial and none is queued, there is nothing left to train
        everything = study.get_trials(deepcopy=False)
        if not untried_keys(everything, settings.space) and not any(t.state == TrialState.WAITING for t in everything):
            break
        # Every trial failing (a broken environment, say) must not loop forever: each may fail and be retried
        if failures >= settings.n_trials * (settings.max_retries + 1):
            progress(f"stopping: {failures} trials failed in this run (see trial_*/results.json for the reasons)")
            return 1
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[after_trial])
    return 0


def _requeue_interrupted(study: optuna.Study, settings: SearchSettings, number: int | None) -> None:
    """Optuna failed the trial this process was running when the interrupt came: queue it again."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is not None and trial.state == TrialState.FAIL:
        retry_callback(settings)(study, trial)


def run_stages(study: optuna.Study, settings: SearchSettings, progress: Callable[[str], None]) -> int:
    """The search (unless --confirm-only), then the confirmation (with --confirm-top-k). An interrupt queues the
    run this process was training again, in the study it belongs to."""
    objective = Objective(settings, progress)
    stage = study, objective
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        code = 0 if settings.confirm_only else run_search(study, settings, objective)
        if code == 0 and settings.confirm_top_k:
            confirm, confirm_objective = open_confirm_study(settings), ConfirmObjective(settings, progress)
            stage = confirm, confirm_objective
            code = run_confirmation(
                study, confirm, settings, confirm_objective, lambda: write_report(study, settings.output_dir)
            )
    except KeyboardInterrupt as e:
        _requeue_interrupted(stage[0], settings, stage[1].current)
        progress(f"interrupted ({type(e).__name__}); the running trial is queued again. Rerun the same command.")
        return 143 if isinstance(e, Interrupted) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        write_report(study, settings.output_dir)
    return code


def report_only(args: argparse.Namespace) -> int:
    """`--report-only`: rebuild the artifacts of an existing study, without training."""
    output_dir = Path(args.output_dir).expanduser()
    storage = args.storage or f"sqlite:///{(output_dir / 'study.db').resolve()}"
    if storage.startswith("sqlite") and not (output_dir / "study.db").exists() and not args.storage:
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    progress = _printer()
    if args.report_only:
        try:
            return report_only(args)
        except UsageError as e:
            print(f"search_phase1.py: error: {e}", file=sys.stderr)
            return 2
    try:
        settings = settings_from_args(args)
        check_trial_config(settings)
        check_resumable(settings)
    except UsageError as e:
        print(f"search_phase1.py: error: {e}", file=sys.stderr)
        return 2
    for note in settings.warnings:
        print(f"search_phase1.py: warning: {note}", file=sys.stderr)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and retries are marked experimental by Optuna; they are what resuming relies on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = open_study(settings)
    progress(
        f"study {settings.study_name}: {finished_count(study)}/{settings.n_trials} finished, "
        f"{settings.trial_steps} steps per trial, {settings.n_evaluations} evaluations (grace "
        f"{settings.grace_evaluations}), storage {settings.as_dict()['storage']}"
    )
    if settings.n_workers > 1:
        progress(
            f"{settings.n_workers} workers: {settings.trials_per_device} trial(s) at once on "
            + (f"each of GPUs {','.join(map(str, settings.gpus))}" if settings.gpus else "the CPU")
        )
        code = run_workers(study, settings, argv, progress)
        write_report(study, settings.output_dir)
        progress(f"done: {finished_count(study)} finished trials in {settings.study_name} (exit {code})")
        return code
    code = run_stages(study, settings, progress)
    if code in (130, 143):
        return code
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    progress(
        f"done: {finished_count(study)} finished trials in {settings.study_name}"
        + (f", {running} still running in other workers" if running else "")
    )
    return code
