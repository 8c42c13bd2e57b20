"""The tables of the report: one row per trial (`results.csv`), the best JEPA configurations (`topk.json`), and the
Phase 2 config of the best one (`best_config.yaml`)."""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from jepa_search.experiments import EXPERIMENTS
from jepa_search.overrides import phase2_command, phase2_overrides
from jepa_search.results import SUMMARY_KEYS
from jepa_search.settings import StudyConfig
from jepa_search.space import configuration, is_control
from jepa_search.study import COMPILE_ATTR, search_return, trial_folder

TOP_MAX, TOP_MIN = 6, 4
CONFIRMATION_KEYS = (
    "runs",
    "returns",
    "mean",
    "mean_ci",
    "iqm",
    "iqm_ci",
    "std",
    "range",
    "p_improvement",
    "p_improvement_ci",
)


def curve(trial: FrozenTrial) -> list[float]:
    """The trial's smoothed return after each evaluation so far."""
    return trial.user_attrs.get("smoothed_returns", [])


def value(trial: FrozenTrial) -> float | None:
    """A complete trial's return; a pruned one's best smoothed return so far (for ranking fill-ins only)."""
    if trial.state == TrialState.COMPLETE:
        return search_return(trial)
    return max(curve(trial), default=None)


def trial_rows(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, control or not, each parameter, the returns, steps, time, memory, seed,
    fail reason."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in configuration(t)})
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "control": is_control(t),
            **{name: configuration(t).get(name) for name in names},
            "objective": value(t) if t.state == TrialState.COMPLETE else None,
            **{k: t.user_attrs.get(k) for k in SUMMARY_KEYS},
        }
        for t in trials
    ]
    return pd.DataFrame(rows, columns=["number", "state", "control", *names, "objective", *SUMMARY_KEYS])


def _ranked(study: optuna.Study, confirmed: list[dict[str, Any]]) -> list[FrozenTrial]:
    """The JEPA trials (never the control), best first: the confirmed configurations by their confirmation IQM, then
    complete trials by return, then pruned ones (only to fill up to TOP_MIN)."""
    jepa = [t for t in study.trials if not is_control(t) and value(t) is not None]
    by_number = {t.number: t for t in jepa}
    first = [by_number[g["source_trial"]] for g in confirmed if g["source_trial"] in by_number]
    confirmed_numbers = {t.number for t in first}
    complete = sorted(
        (t for t in jepa if t.state == TrialState.COMPLETE and t.number not in confirmed_numbers),
        key=lambda t: -value(t),
    )
    pruned = sorted((t for t in jepa if t.state == TrialState.PRUNED), key=lambda t: -value(t))
    top = (first + complete)[: max(TOP_MAX, len(first))]
    return top + pruned[: max(0, TOP_MIN - len(top))]


def topk(study: optuna.Study, config: StudyConfig, confirmed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best JEPA configurations; `ranked_by` says whether the confirmation or the search's one seed ranked it."""
    by_trial = {g["source_trial"]: g for g in confirmed}
    top = []
    for rank, t in enumerate(_ranked(study, confirmed), start=1):
        group = by_trial.get(t.number)
        route = t.user_attrs.get(COMPILE_ATTR, "off")
        top.append(
            {
                "rank": rank,
                "number": t.number,
                "ranked_by": "confirmation" if group else "search",
                "pruned": t.state == TrialState.PRUNED,
                "objective": value(t),
                "confirmation": None if group is None else {k: group.get(k) for k in CONFIRMATION_KEYS},
                "params": t.params,
                "fixed": dict(config.space.fixed),
                "best_eval_return": t.user_attrs.get("best_eval_return"),
                "best_smoothed_return": t.user_attrs.get("best_smoothed_return"),
                "last_eval_return": t.user_attrs.get("last_eval_return"),
                "seed": t.user_attrs.get("seed"),
                "trial_dir": trial_folder(t),
                "compile": route,
                "phase2_command": phase2_command(config, t.params, route),
            }
        )
    return top


def best_config(config: StudyConfig, params: dict[str, Any], route: str = "off") -> str:
    """A primary SheepRL config for Phase 2, as YAML, equal to the explicit overrides of `phase2_command`:
    `sheeprl --config-path DIR --config-name best_config` runs it."""
    header = OmegaConf.create(
        {
            "defaults": [
                "config",
                {"override exp": EXPERIMENTS[config.env]},
                {"override env": config.env},
                "_self_",
            ],
            # The file is run with --config-path: this brings back SheepRL's configs (and so this project's)
            "hydra": {"searchpath": ["pkg://sheeprl.configs"]},
        }
    )
    # The first override is the env group, which the defaults list holds
    values = OmegaConf.from_dotlist([o.lstrip("+~") for o in phase2_overrides(config, params, route)[1:]])
    return OmegaConf.to_yaml(OmegaConf.merge(header, values), sort_keys=False)
