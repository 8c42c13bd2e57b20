"""Confirmation: the K best configurations of the search and the control, trained again on fresh seeds.

A search ranks configurations by one seed each, at 25-130 points of seed-to-seed spread: the winner may be lucky.
Each confirmation run is a trial of the study `<study>-confirm` in the same storage (so it resumes, survives a
killed worker and can be shared by several workers), queued with its configuration and seed in its user attributes,
trained by the same trial machinery as the search (never pruned), and scored by the same objective: the best
smoothed evaluation return. Its statistics are rebuilt from that study by the report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from jepa_search import stats
from jepa_search.objective import Objective, make_spec, not_trained
from jepa_search.settings import SearchSettings
from jepa_search.space import CONTROL_PARAMS, is_control
from jepa_search.study import NOT_TRAINED_ATTR, ranked_complete, retry_callback

RUN_ATTR = "confirm_run"
CONTROL_LABEL = "control"
# Confirmation seeds are seed0 + SEED_OFFSET + i: disjoint from the search's (seed0 + trial number) below a million
# trials, and the same for every configuration, so that configurations are compared on the same seeds
SEED_OFFSET = 1_000_000


class NothingToRun(RuntimeError):
    """A confirmation trial with no run of its own: another worker took the last queued one, or the same run was
    queued twice by two workers starting together and the other one has it."""


def run_dir_name(number: int) -> str:
    return f"confirm/run_{number}"


def _key(run: dict[str, Any]) -> tuple[str, int]:
    return json.dumps(run["params"], sort_keys=True), run["seed"]


def planned_runs(study: optuna.Study, settings: SearchSettings) -> list[dict[str, Any]]:
    """The top `confirm_top_k` complete configurations of the search now, and the control, on `confirm_seeds` seeds."""
    top = ranked_complete(study)[: settings.confirm_top_k]
    configs = [(f"trial {t.number}", t.number, dict(t.params)) for t in top]
    if settings.control:
        control = next((t.number for t in study.get_trials(deepcopy=False) if is_control(t)), None)
        configs.append((CONTROL_LABEL, control, dict(CONTROL_PARAMS)))
    seeds = [settings.seed0 + SEED_OFFSET + i for i in range(settings.confirm_seeds)]
    return [{"label": label, "source_trial": n, "params": p, "seed": s} for label, n, p in configs for s in seeds]


def enqueue_missing(confirm: optuna.Study, plan: list[dict[str, Any]]) -> int:
    """Queue the planned runs that no trial has done, is doing or waits for; returns how many were queued."""
    alive = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    have = {_key(t.user_attrs[RUN_ATTR]) for t in confirm.get_trials(deepcopy=False, states=alive) if is_run(t)}
    missing = [r for r in plan if _key(r) not in have]
    for r in missing:
        confirm.enqueue_trial({}, user_attrs={RUN_ATTR: r})
    return len(missing)


def is_run(trial: FrozenTrial) -> bool:
    """A trial that trained (or is to train) a run, not one that ended with nothing to run."""
    return RUN_ATTR in trial.user_attrs and not trial.user_attrs.get(NOT_TRAINED_ATTR)


class ConfirmObjective(Objective):
    """One confirmation run: the queued configuration and seed, at `confirm_steps`, never pruned; its return."""

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        run_ = trial.user_attrs.get(RUN_ATTR)
        twin = run_ and next(
            (
                t.number
                for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                if t.number < trial.number and RUN_ATTR in t.user_attrs and _key(t.user_attrs[RUN_ATTR]) == _key(run_)
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
        return float(self.train(trial, spec, started)["objective"])


def run_confirmation(
    study: optuna.Study,
    confirm: optuna.Study,
    settings: SearchSettings,
    objective: ConfirmObjective,
    after: Callable[[], None],
) -> int:
    """Queue the missing runs of the plan, then train queued runs until none is left (other workers may share them).
    Exit code 1 when a planned run failed for good."""
    plan = planned_runs(study, settings)
    queued = enqueue_missing(confirm, plan)
    objective.progress(f"confirmation: {len(plan)} runs planned, {queued} queued now, {settings.confirm_steps} steps")
    retry = retry_callback(settings)

    def after_run(confirm: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get(NOT_TRAINED_ATTR):
            retry(confirm, trial)
        objective.progress(f"confirmation run {trial.number} {trial.state.name.lower()}")
        after()

    while True:
        fail_stale_trials(confirm)
        if not confirm.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            break
        confirm.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[after_run])
    # Complete here, or still running in another worker
    alive = confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    done = {_key(t.user_attrs[RUN_ATTR]) for t in alive if is_run(t)}
    return 0 if all(_key(r) in done for r in plan) else 1


def confirmation_rows(confirm: optuna.Study) -> list[dict[str, Any]]:
    """One row per confirmation run (configuration x seed), with its state and return."""
    rows = []
    for t in confirm.get_trials(deepcopy=False):
        if not is_run(t):
            continue
        r = t.user_attrs[RUN_ATTR]
        rows.append(
            {
                "run": t.number,
                "configuration": r["label"],
                "source_trial": r["source_trial"],
                **r["params"],
                "seed": r["seed"],
                "state": t.state.name,
                "return": t.value if t.state == TrialState.COMPLETE else None,
                "best_eval_return": t.user_attrs.get("best_eval_return"),
                "last_eval_return": t.user_attrs.get("last_eval_return"),
                "steps": t.user_attrs.get("steps"),
                "wall_time_s": t.user_attrs.get("wall_time_s"),
                "run_dir": t.user_attrs.get("trial_dir"),
                "fail_reason": t.user_attrs.get("fail_reason"),
            }
        )
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration with complete runs: mean and IQM with 95% stratified-bootstrap intervals, the seed-to-seed
    spread, and P(run beats a control run) with its interval; best IQM first, the control last."""
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["return"] is not None:
            g = groups.setdefault(r["configuration"], {"configuration": r["configuration"], "returns": []})
            g.update(source_trial=r["source_trial"])
            g["returns"].append(r["return"])
    control = groups.get(CONTROL_LABEL, {}).get("returns")
    out = []
    for g in groups.values():
        x = g["returns"]
        g.update(
            runs=len(x),
            mean=float(stats.mean(x)),
            mean_ci=stats.bootstrap_ci(x, stats.mean),
            iqm=float(stats.iqm(x)),
            iqm_ci=stats.bootstrap_ci(x, stats.iqm),
            std=float(np.std(x, ddof=1)) if len(x) > 1 else None,
            range=float(max(x) - min(x)),
        )
        if control and g["configuration"] != CONTROL_LABEL:
            g.update(p_improvement=float(stats.probability_of_improvement(x, control)))
            g.update(p_improvement_ci=stats.improvement_ci(x, control))
        out.append(g)
    return sorted(out, key=lambda g: (g["configuration"] == CONTROL_LABEL, -g["iqm"], -g["mean"]))
