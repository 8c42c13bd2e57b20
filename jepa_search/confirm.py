"""Confirmation: the K best configurations of the search and the control, trained again on fresh seeds.

A search ranks configurations by one seed each, at 25-130 points of seed-to-seed spread: the winner may be lucky.
Each confirmation run is a trial of the study `<study>-confirm` in the same storage (so it resumes, survives a
killed worker and can be shared by several workers), queued with its configuration and seed in its user attributes,
trained by the same trial machinery as the search (never pruned), and scored by the same objective: the best
smoothed evaluation return. Its statistics are rebuilt from that study by the report.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from jepa_search.confirm_results import CONTROL_LABEL
from jepa_search.objective import Objective, make_spec, not_trained
from jepa_search.record import ConfirmRun, confirm_run, enqueue_run, records
from jepa_search.schedule import confirmation_decision, run_trials
from jepa_search.seeds import confirmation_seeds
from jepa_search.settings import SearchSettings
from jepa_search.space import CONTROL_PARAMS
from jepa_search.study import ranked_complete


class NothingToRun(RuntimeError):
    """A confirmation trial with no run of its own: another worker took the last queued one, or the same run was
    queued twice by two workers starting together and the other one has it."""


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


class ConfirmObjective(Objective):
    """One confirmation run: the queued configuration and seed, at `confirm_steps`, never pruned; its return."""

    def __call__(self, trial: optuna.Trial, cancel: threading.Event | None = None) -> float:
        self.claim(trial)
        run_ = confirm_run(trial)
        twin = run_ and next(
            (
                r.number
                for r in records(trial.study, (TrialState.COMPLETE, TrialState.RUNNING))
                if r.number < trial.number and r.run is not None and r.run.key() == run_.key()
            ),
            None,
        )
        if run_ is None or twin is not None:
            reason = NothingToRun("no queued run left" if run_ is None else f"the same run is run {twin}")
            not_trained(trial, reason)
            raise reason
        s = self.settings
        spec = make_spec(s, self.lineage, trial, run_.params, run_.seed, s.confirm_steps, prunable=False)
        started = f"confirmation run {trial.number} started: {run_.label} {run_.params} seed {run_.seed}"
        return float(self.train(trial, spec, started, cancel).objective)


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
