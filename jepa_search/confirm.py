"""Confirmation: the K best configurations of the search and the control, trained again on fresh seeds.

A search ranks configurations by one seed each, at 25-130 points of seed-to-seed spread: the winner may be lucky.
Each confirmation run is a trial of the study `<study>-confirm` in the same storage (so it resumes, survives a
killed worker and can be shared by several workers), queued with its configuration and seed in its user attributes,
trained by the same trial machinery as the search (never pruned), and scored by the same objective: the best
smoothed evaluation return. Its statistics are rebuilt from that study by the report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from jepa_search.confirm_results import CONTROL_LABEL, RUN_ATTR, is_run, run_key
from jepa_search.driver import START, STOP, Decision, run_trials, waiting_for
from jepa_search.objective import Objective, make_spec, not_trained
from jepa_search.results import run_dir_name
from jepa_search.seeds import confirmation_seeds
from jepa_search.settings import SearchSettings
from jepa_search.space import CONTROL_PARAMS, is_control
from jepa_search.study import ranked_complete


class NothingToRun(RuntimeError):
    """A confirmation trial with no run of its own: another worker took the last queued one, or the same run was
    queued twice by two workers starting together and the other one has it."""


def planned_runs(study: optuna.Study, settings: SearchSettings) -> list[dict[str, Any]]:
    """The top `confirm_top_k` complete configurations of the search now, and the control, on `confirm_seeds` seeds."""
    top = ranked_complete(study)[: settings.confirm_top_k]
    configs = [(f"trial {t.number}", t.number, dict(t.params)) for t in top]
    if settings.control:
        control = next((t.number for t in study.get_trials(deepcopy=False) if is_control(t)), None)
        configs.append((CONTROL_LABEL, control, dict(CONTROL_PARAMS)))
    seeds = confirmation_seeds(settings.seed0, settings.confirm_seeds)
    return [{"label": label, "source_trial": n, "params": p, "seed": s} for label, n, p in configs for s in seeds]


def enqueue_missing(confirm: optuna.Study, plan: list[dict[str, Any]]) -> int:
    """Queue the planned runs that no trial has done, is doing or waits for; returns how many were queued."""
    alive = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    have = {run_key(t.user_attrs[RUN_ATTR]) for t in confirm.get_trials(deepcopy=False, states=alive) if is_run(t)}
    missing = [r for r in plan if run_key(r) not in have]
    for r in missing:
        confirm.enqueue_trial({}, user_attrs={RUN_ATTR: r})
    return len(missing)


class ConfirmObjective(Objective):
    """One confirmation run: the queued configuration and seed, at `confirm_steps`, never pruned; its return."""

    def score(self, trial: optuna.Trial) -> float:
        self.claim(trial, run_dir_name(trial.number))
        run_ = trial.user_attrs.get(RUN_ATTR)
        twin = run_ and next(
            (
                t.number
                for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                if t.number < trial.number
                and RUN_ATTR in t.user_attrs
                and run_key(t.user_attrs[RUN_ATTR]) == run_key(run_)
            ),
            None,
        )
        if run_ is None or twin is not None:
            reason = NothingToRun("no queued run left" if run_ is None else f"the same run is run {twin}")
            not_trained(trial, reason)
            raise reason
        s = self.settings
        spec = make_spec(s, trial, run_["params"], run_["seed"], run_dir_name, s.confirm_steps, prunable=False)
        started = f"confirmation run {trial.number} started: {run_['label']} {run_['params']} seed {run_['seed']}"
        return float(self.train(trial, spec, started).objective)


def _next_run(confirm: optuna.Study) -> Decision:
    """A queued run to train; else wait for the runs other workers train; else stop."""
    if confirm.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return START
    running = confirm.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return Decision("wait", waiting_for(running)) if running else STOP


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

    run_trials(confirm, objective, settings, _next_run, after_run, objective.progress)
    complete = confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = {run_key(t.user_attrs[RUN_ATTR]) for t in complete if is_run(t)}
    return 0 if all(run_key(r) in done for r in plan) else 1
