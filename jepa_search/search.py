"""The search in this process: trials until the study has `--n-trials` finished, then the confirmation.

When to start, wait or stop is `schedule.search_decision`, the rule every worker shares. An interrupt (Ctrl-C,
SIGTERM) fails the trials this process runs and queues them again.

The confirmation: a search ranks configurations by one seed each, at 25-130 points of seed-to-seed spread, so the
winner may be lucky. The K best configurations and the control are trained again on fresh seeds, each run a trial of
the study `<study>-confirm` in the same storage (so it resumes, survives a killed worker and can be shared by several
workers), queued with its configuration and seed (`record.ConfirmRun`), trained by the same trial machinery as the
search (never pruned), and scored by the same objective: the best smoothed evaluation return. Its statistics are
rebuilt from that study by the report.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from jepa_dreamer.runner import run
from jepa_search.objective import ConfirmObjective, Objective
from jepa_search.progress import Progress, time_left
from jepa_search.record import ConfirmRun, enqueue_run, records
from jepa_search.report import write_report
from jepa_search.report.tables import CONTROL_LABEL
from jepa_search.schedule import Decision, confirmation_decision, failed_too_often, run_trials, search_decision
from jepa_search.seeds import confirmation_seeds
from jepa_search.settings import SearchSettings
from jepa_search.space import CONTROL_PARAMS
from jepa_search.study import FINISHED, open_confirm_study, ranked_complete
from jepa_search.trial import Trainer


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that `finally` blocks run and Optuna records the running trial as failed."""


# After a trial the artifacts are rewritten unless this process did so less than this long ago: a rewrite draws the
# plots (about a second on 2 cores), while a dry run's trials end seconds apart. A real trial takes minutes
REPORT_EVERY_S = 30.0


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


class Report:
    """The study's artifacts (`jepa_search.report`) as this process keeps them: after a trial unless it rewrote them
    less than `REPORT_EVERY_S` ago, and at the end."""

    def __init__(self, study: optuna.Study, output_dir: Path) -> None:
        self.study, self.output_dir = study, output_dir
        self.written = -math.inf

    def after_trial(self) -> None:
        if time.monotonic() - self.written >= REPORT_EVERY_S:
            self.write()

    def write(self) -> None:
        write_report(self.study, self.output_dir)
        self.written = time.monotonic()


def run_search(
    study: optuna.Study, settings: SearchSettings, objective: Objective, after: Callable[[], None] = lambda: None
) -> int:
    """Train trials until the study has `n_trials` finished (complete or pruned), counting every worker's and the
    control, or until every configuration of the space has been tried; `after()` after each. Exit code 1 after too
    many failures."""
    progress = objective.progress
    failures = 0

    def decide(trials: list[FrozenTrial]) -> Decision:
        return search_decision(trials, settings, failures)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal failures
        failures += trial.state == TrialState.FAIL
        done = study.get_trials(deepcopy=False, states=FINISHED)
        pruned = sum(t.state == TrialState.PRUNED for t in done)
        seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done if t.datetime_start]
        left = time_left(sum(seconds), len(seconds), len(seconds) + max(0, settings.n_trials - len(done)))
        progress(
            f"trial {trial.number} {trial.state.name.lower()}"
            + (f" values {', '.join(f'{v:.2f}' for v in trial.values)}" if trial.values else "")
            + f"; finished {len(done)}/{settings.n_trials} ({pruned} pruned), about {left / 3600:.1f} h left"
        )
        after()

    run_trials(study, objective, settings, decide, after_trial, progress)
    if failed_too_often(settings, failures):
        progress(f"stopping: {failures} trials failed in this run (see trial_*/results.json for the reasons)")
        return 1
    return 0


def planned_runs(study: optuna.Study, settings: SearchSettings) -> list[ConfirmRun]:
    """The top `confirm_top_k` complete configurations of the search now, and the control, on `confirm_seeds` seeds."""
    top = ranked_complete(study)[: settings.confirm_top_k]
    configs = [(f"trial {r.number}", r.number, r.params) for r in top]
    if settings.control:
        control = next((r.number for r in records(study) if r.control), None)
        configs.append((CONTROL_LABEL, control, dict(CONTROL_PARAMS)))
    seeds = confirmation_seeds(settings.seed0, settings.confirm_seeds)
    return [ConfirmRun(label, n, dict(p), s) for label, n, p in configs for s in seeds]


def _run_keys(confirm: optuna.Study, states: tuple[TrialState, ...]) -> set[tuple[str, int]]:
    return {r.run.key() for r in records(confirm, states) if r.is_run and r.run is not None}


def enqueue_missing(confirm: optuna.Study, plan: list[ConfirmRun]) -> int:
    """Queue the planned runs that no trial has done, is doing or waits for; returns how many were queued."""
    have = _run_keys(confirm, (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))
    missing = [r for r in plan if r.key() not in have]
    for r in missing:
        enqueue_run(confirm, r)
    return len(missing)


def run_confirmation(
    study: optuna.Study,
    confirm: optuna.Study,
    settings: SearchSettings,
    objective: ConfirmObjective,
    after: Callable[[], None],
) -> int:
    """Queue the missing runs of the plan, then train queued runs until none is left or runs elsewhere (other
    workers may share them). Exit code 1 when a planned run failed for good."""
    plan = planned_runs(study, settings)
    queued = enqueue_missing(confirm, plan)
    objective.progress(f"confirmation: {len(plan)} runs planned, {queued} queued now, {settings.confirm_steps} steps")

    def after_run(confirm: optuna.Study, trial: FrozenTrial) -> None:
        objective.progress(f"confirmation run {trial.number} {trial.state.name.lower()}")
        after()

    run_trials(confirm, objective, settings, confirmation_decision, after_run, objective.progress)
    done = _run_keys(confirm, (TrialState.COMPLETE,))
    return 0 if all(r.key() in done for r in plan) else 1


def run_stages(study: optuna.Study, settings: SearchSettings, progress: Progress, trainer: Trainer = run) -> int:
    """The search (unless --confirm-only), then the confirmation (with --confirm-top-k). An interrupt queues the
    runs this process was training again (`run_trials`); exit codes 130 (SIGINT) and 143 (SIGTERM)."""
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    report = Report(study, settings.output_dir)
    try:
        code = 0
        if not settings.confirm_only:
            code = run_search(study, settings, Objective(settings, progress, trainer), report.after_trial)
        if code == 0 and settings.confirm_top_k:
            confirm, confirm_objective = open_confirm_study(settings), ConfirmObjective(settings, progress, trainer)
            code = run_confirmation(study, confirm, settings, confirm_objective, report.after_trial)
    except KeyboardInterrupt as e:
        progress(f"interrupted ({type(e).__name__}); the running trials are queued again. Rerun the same command.")
        return 143 if isinstance(e, Interrupted) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        report.write()
    return code
