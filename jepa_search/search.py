"""The search in this process: trials until the study has `--n-trials` finished, then the confirmation.

When to start, wait or stop is `schedule.search_decision`, the rule every worker shares. An interrupt (Ctrl-C,
SIGTERM) fails the trials this process runs and queues them again.
"""

from __future__ import annotations

import signal

import optuna
from optuna.trial import FrozenTrial, TrialState

from jepa_dreamer.runner import run
from jepa_search.confirm import ConfirmObjective, run_confirmation
from jepa_search.objective import Objective
from jepa_search.progress import Progress, time_left
from jepa_search.report import write_report
from jepa_search.schedule import Decision, failed_too_often, run_trials, search_decision
from jepa_search.settings import SearchSettings
from jepa_search.study import FINISHED, open_confirm_study
from jepa_search.trial import Trainer


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that `finally` blocks run and Optuna records the running trial as failed."""


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def run_search(study: optuna.Study, settings: SearchSettings, objective: Objective) -> int:
    """Train trials until the study has `n_trials` finished (complete or pruned), counting every worker's and the
    control, or until every configuration of the space has been tried. Exit code 1 after too many failures."""
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
        write_report(study, settings.output_dir)

    run_trials(study, objective, settings, decide, after_trial, progress)
    if failed_too_often(settings, failures):
        progress(f"stopping: {failures} trials failed in this run (see trial_*/results.json for the reasons)")
        return 1
    return 0


def run_stages(study: optuna.Study, settings: SearchSettings, progress: Progress, trainer: Trainer = run) -> int:
    """The search (unless --confirm-only), then the confirmation (with --confirm-top-k). An interrupt queues the
    runs this process was training again (`run_trials`); exit codes 130 (SIGINT) and 143 (SIGTERM)."""
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        code = 0 if settings.confirm_only else run_search(study, settings, Objective(settings, progress, trainer))
        if code == 0 and settings.confirm_top_k:
            confirm, confirm_objective = open_confirm_study(settings), ConfirmObjective(settings, progress, trainer)
            code = run_confirmation(
                study, confirm, settings, confirm_objective, lambda: write_report(study, settings.output_dir)
            )
    except KeyboardInterrupt as e:
        progress(f"interrupted ({type(e).__name__}); the running trials are queued again. Rerun the same command.")
        return 143 if isinstance(e, Interrupted) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        write_report(study, settings.output_dir)
    return code
