"""The confirmation's runs as the study holds them, and their statistics: what the report reads.

Each confirmation run is a trial of the study `<study>-confirm`, queued with its configuration and seed
(`record.ConfirmRun`); its return is the search's objective, the best smoothed evaluation return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from jepa_search import stats
from jepa_search.record import ConfirmRun, records

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
