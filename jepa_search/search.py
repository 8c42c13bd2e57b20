"""The search in this process: trials until the study has `--n-trials` finished, then the confirmation.

A trial another worker runs counts (so that several workers stop together at `--n-trials`, or a few more when two
start a trial at the same moment); once the trials left all run elsewhere, this process waits for them and takes
over any whose worker dies. An interrupt (Ctrl-C, SIGTERM) fails the trials this process runs and queues them again.
"""

from __future__ import annotations

import signal

import optuna
from optuna.trial import FrozenTrial, TrialState

from jepa_dreamer.runner import run
from jepa_search.confirm import ConfirmObjective, run_confirmation
from jepa_search.driver import START, STOP, Decision, run_trials, waiting_for
from jepa_search.objective import Objective
from jepa_search.progress import Progress, time_left
from jepa_search.report import write_report
from jepa_search.sampler import untried_keys
from jepa_search.settings import SearchSettings
from jepa_search.study import FINISHED, open_confirm_study
from jepa_search.trial import Trainer


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that `finally` blocks run and Optuna records the running trial as failed."""


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


class _SearchPlan:
    """Whether to train another trial: not once the study has its finished trials, nor when every trial left runs
    elsewhere (then wait), nor when nothing is left to sample, nor after too many failures in this run."""

    def __init__(self, settings: SearchSettings) -> None:
        self.settings = settings
        self.failures = 0

    def failed_too_often(self) -> bool:
        # Every trial failing (a broken environment, say) must not loop forever: each may fail and be retried
        return self.failures >= self.settings.n_trials * (self.settings.max_retries + 1)

    def __call__(self, study: optuna.Study) -> Decision:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if finished >= self.settings.n_trials or self.failed_too_often():
            return STOP
        # No duplicates: once every configuration has a trial and none is queued, nothing is left to train
        exhausted = not waiting and not untried_keys(trials, self.settings.space)
        if finished + len(running) >= self.settings.n_trials or exhausted:
            return Decision("wait", waiting_for(running)) if running else STOP
        return START


def run_search(study: optuna.Study, settings: SearchSettings, objective: Objective) -> int:
    """Train trials until the study has `n_trials` finished (complete or pruned), counting every worker's and the
    control, or until every configuration of the space has been tried. Exit code 1 after too many failures."""
    plan = _SearchPlan(settings)
    progress = objective.progress

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        plan.failures += trial.state == TrialState.FAIL
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

    run_trials(study, objective, settings, plan, after_trial, progress)
    if plan.failed_too_often():
        progress(f"stopping: {plan.failures} trials failed in this run (see trial_*/results.json for the reasons)")
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
