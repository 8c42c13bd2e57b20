"""The confirmation's runs as the study holds them, and their statistics: what the report reads.

Each confirmation run is a trial of the study `<study>-confirm`, queued with its configuration and seed in its user
attributes (`RUN_ATTR`); its return is the search's objective, the best smoothed evaluation return.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from jepa_search import stats
from jepa_search.study import NOT_TRAINED_ATTR, trial_folder

RUN_ATTR = "confirm_run"
CONTROL_LABEL = "control"


def run_key(run: dict[str, Any]) -> tuple[str, int]:
    return json.dumps(run["params"], sort_keys=True), run["seed"]


def is_run(trial: FrozenTrial) -> bool:
    """A trial that trained (or is to train) a run, not one that ended with nothing to run."""
    return RUN_ATTR in trial.user_attrs and not trial.user_attrs.get(NOT_TRAINED_ATTR)


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
                "run_dir": trial_folder(t),
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
