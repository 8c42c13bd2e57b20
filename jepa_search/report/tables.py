"""The tables of the report: one row per trial (`results.csv`), one per confirmation run (`confirm.csv`) with the
statistics of each configuration's runs, the best JEPA configurations (`topk.json`), and the Phase 2 config of the
best one (`best_config.yaml`).

Each confirmation run is a trial of the study `<study>-confirm`, queued with its configuration and seed
(`record.ConfirmRun`); its return is the search's objective, the best smoothed evaluation return.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import optuna
import pandas as pd
from omegaconf import OmegaConf
from optuna.trial import TrialState

from jepa_search import stats
from jepa_search.experiments import EXPERIMENTS
from jepa_search.overrides import phase2_command, phase2_overrides
from jepa_search.record import ConfirmRun, TrialRecord, TrialSummary, records
from jepa_search.settings import StudyConfig

CONTROL_LABEL = "control"


@dataclass(frozen=True)
class ConfirmRow:
    """A confirmation run (configuration x seed), with its state and return: a row of confirm.csv."""

    number: int
    run: ConfirmRun
    state: str
    # The run's return, when it completed
    value: float | None
    best_eval_return: float | None
    last_eval_return: float | None
    steps: int | None
    wall_time_s: float | None
    folder: str | None
    fail_reason: str | None

    def as_row(self) -> dict[str, Any]:
        """The row of confirm.csv (its columns as earlier versions wrote them)."""
        return {
            "run": self.number,
            "configuration": self.run.label,
            "source_trial": self.run.source_trial,
            **self.run.params,
            "seed": self.run.seed,
            "state": self.state,
            "return": self.value,
            "best_eval_return": self.best_eval_return,
            "last_eval_return": self.last_eval_return,
            "steps": self.steps,
            "wall_time_s": self.wall_time_s,
            "run_dir": self.folder,
            "fail_reason": self.fail_reason,
        }


@dataclass(frozen=True)
class ConfirmGroup:
    """A configuration's complete runs and their statistics: mean and IQM with 95% stratified-bootstrap intervals,
    the seed-to-seed spread, and P(run beats a control run) with its interval (None for the control itself, or
    without a complete control run)."""

    configuration: str
    source_trial: int | None
    returns: tuple[float, ...]
    mean: float
    mean_ci: tuple[float, float]
    iqm: float
    iqm_ci: tuple[float, float]
    std: float | None
    range: float
    p_improvement: float | None = None
    p_improvement_ci: tuple[float, float] | None = None

    @property
    def runs(self) -> int:
        return len(self.returns)

    @property
    def is_control(self) -> bool:
        return self.configuration == CONTROL_LABEL


def confirmation_rows(confirm: optuna.Study) -> list[ConfirmRow]:
    """One row per confirmation run (configuration x seed), with its state and return."""
    return [
        ConfirmRow(
            number=r.number,
            run=r.run,
            state=r.state.name,
            value=r.value,
            best_eval_return=r.summary.best_eval_return,
            last_eval_return=r.summary.last_eval_return,
            steps=r.summary.steps,
            wall_time_s=r.summary.wall_time_s,
            folder=r.claim.folder if r.claim is not None else None,
            fail_reason=r.fail_reason,
        )
        for r in records(confirm)
        if r.is_run and r.run is not None
    ]


def _group(configuration: str, source_trial: int | None, x: list[float], control: list[float] | None) -> ConfirmGroup:
    improvement = control is not None and configuration != CONTROL_LABEL
    return ConfirmGroup(
        configuration=configuration,
        source_trial=source_trial,
        returns=tuple(x),
        mean=float(stats.mean(x)),
        mean_ci=stats.bootstrap_ci(x, stats.mean),
        iqm=float(stats.iqm(x)),
        iqm_ci=stats.bootstrap_ci(x, stats.iqm),
        std=float(np.std(x, ddof=1)) if len(x) > 1 else None,
        range=float(max(x) - min(x)),
        p_improvement=float(stats.probability_of_improvement(x, control)) if improvement else None,
        p_improvement_ci=stats.improvement_ci(x, control) if improvement else None,
    )


def aggregate(rows: list[ConfirmRow]) -> list[ConfirmGroup]:
    """Per configuration with complete runs, its statistics; best IQM first, the control last."""
    returns: dict[str, list[float]] = {}
    sources: dict[str, int | None] = {}
    for r in rows:
        if r.value is not None:
            returns.setdefault(r.run.label, []).append(r.value)
            sources[r.run.label] = r.run.source_trial
    control = returns.get(CONTROL_LABEL) or None
    groups = [_group(label, sources[label], x, control) for label, x in returns.items()]
    return sorted(groups, key=lambda g: (g.is_control, -g.iqm, -g.mean))


TOP_MAX, TOP_MIN = 6, 4
# What topk.json shows of a configuration's confirmation (with its number of runs)
CONFIRMATION_KEYS = ("returns", "mean", "mean_ci", "iqm", "iqm_ci", "std", "range", "p_improvement", "p_improvement_ci")
# The numbers of a trial's summary that results.csv shows, between its seed and its fail reason
SUMMARY_COLUMNS = tuple(f.name for f in fields(TrialSummary))


def value(record: TrialRecord) -> float | None:
    """A complete trial's return; a pruned one's best smoothed return so far (for ranking fill-ins only)."""
    if record.state == TrialState.COMPLETE:
        return record.value
    return max(record.curve, default=None)


def trial_rows(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, control or not, each parameter, the returns, steps, time, memory, seed,
    fail reason."""
    trials = records(study)
    names = sorted({name for r in trials for name in r.params})
    columns = ["number", "state", "control", *names, "objective", "seed", *SUMMARY_COLUMNS, "fail_reason"]
    rows = [
        {
            "number": r.number,
            "state": r.state.name,
            "control": r.control,
            **{name: r.params.get(name) for name in names},
            "objective": r.value,
            "seed": r.seed,
            **asdict(r.summary),
            "fail_reason": r.fail_reason,
        }
        for r in trials
    ]
    return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class TopEntry:
    """One of the best JEPA configurations (an entry of topk.json); `ranked_by` says whether the confirmation or the
    search's one seed ranked it."""

    rank: int
    number: int
    ranked_by: str
    pruned: bool
    objective: float | None
    confirmation: ConfirmGroup | None
    params: dict[str, Any]
    fixed: dict[str, Any]
    best_eval_return: float | None
    best_smoothed_return: float | None
    last_eval_return: float | None
    seed: int | None
    trial_dir: str | None
    compile: str
    phase2_command: str

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if (group := self.confirmation) is not None:
            d["confirmation"] = {"runs": group.runs, **{k: getattr(group, k) for k in CONFIRMATION_KEYS}}
        return d


def _ranked(study: optuna.Study, confirmed: list[ConfirmGroup]) -> list[TrialRecord]:
    """The JEPA trials (never the control), best first: the confirmed configurations by their confirmation IQM, then
    complete trials by return, then pruned ones (only to fill up to TOP_MIN)."""
    jepa = [r for r in records(study) if not r.control and value(r) is not None]
    by_number = {r.number: r for r in jepa}
    first = [by_number[g.source_trial] for g in confirmed if g.source_trial in by_number]
    confirmed_numbers = {r.number for r in first}
    complete = sorted(
        (r for r in jepa if r.state == TrialState.COMPLETE and r.number not in confirmed_numbers),
        key=lambda r: -value(r),
    )
    pruned = sorted((r for r in jepa if r.state == TrialState.PRUNED), key=lambda r: -value(r))
    top = (first + complete)[: max(TOP_MAX, len(first))]
    return top + pruned[: max(0, TOP_MIN - len(top))]


def topk(study: optuna.Study, config: StudyConfig, confirmed: list[ConfirmGroup]) -> list[TopEntry]:
    """The best JEPA configurations, best first."""
    by_trial = {g.source_trial: g for g in confirmed}
    return [
        TopEntry(
            rank=rank,
            number=r.number,
            ranked_by="confirmation" if r.number in by_trial else "search",
            pruned=r.state == TrialState.PRUNED,
            objective=value(r),
            confirmation=by_trial.get(r.number),
            params=r.params,
            fixed=dict(config.space.fixed),
            best_eval_return=r.summary.best_eval_return,
            best_smoothed_return=r.summary.best_smoothed_return,
            last_eval_return=r.summary.last_eval_return,
            seed=r.seed,
            trial_dir=r.claim.folder if r.claim is not None else None,
            compile=r.compile,
            phase2_command=phase2_command(config, r.params, r.compile),
        )
        for rank, r in enumerate(_ranked(study, confirmed), start=1)
    ]


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
