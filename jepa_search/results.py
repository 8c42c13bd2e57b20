"""What a trial leaves behind, typed, each with its file format in one place: the evaluation history
(`history.csv`, one `HistoryRow` per evaluation) and the result (`results.json`, a `TrialResult`).

The study keeps a summary of every result with the trial (`record.TrialSummary`), which is what the study-level
artifacts are rebuilt from.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from optuna.trial import TrialState

SMOOTHING_WINDOW = 3


class ObjectiveDef(NamedTuple):
    """One objective of --objectives: its direction, the `TrialResult` field it is read from, and its name in the
    study (what optuna-dashboard shows instead of "Objective 0")."""

    direction: str
    field: str
    metric: str


OBJECTIVES: dict[str, ObjectiveDef] = {
    "return": ObjectiveDef("maximize", "objective", "best smoothed return"),
    "wall_time": ObjectiveDef("minimize", "wall_time_s", "wall time (s)"),
    "peak_gpu_memory": ObjectiveDef("minimize", "peak_memory_mib", "peak GPU memory (MiB)"),
}


def smoothed(returns: list[float], window: int = SMOOTHING_WINDOW) -> float:
    """Mean of the last min(window, k) evaluation returns."""
    tail = returns[-window:]
    return sum(tail) / len(tail)


@dataclass(frozen=True)
class HistoryRow:
    """One evaluation of a trial: a row of its `history.csv`."""

    eval_index: int
    step: int
    frames: int
    eval_return: float
    smoothed_return: float
    return_std: float
    return_min: float
    return_max: float
    episode_length: float
    episodes: int


HISTORY_COLUMNS = tuple(f.name for f in fields(HistoryRow))


def start_history(path: Path) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerow(HISTORY_COLUMNS)


def append_history(path: Path, row: HistoryRow) -> None:
    with path.open("a", newline="") as f:
        csv.writer(f).writerow(dataclasses.astuple(row))


def read_history(path: Path) -> list[HistoryRow]:
    """The rows of a `history.csv`; none when the trial never evaluated (no file)."""
    if not path.exists():
        return []
    kinds = {f.name: f.type for f in fields(HistoryRow)}
    with path.open(newline="") as f:
        return [
            HistoryRow(**{k: int(float(v)) if kinds[k] == "int" else float(v) for k, v in row.items()})
            for row in csv.DictReader(f)
        ]


@dataclass(frozen=True)
class TrialResult:
    """A trial's (or confirmation run's) `results.json`: what it trained, how it ended and what it scored."""

    number: int
    params: dict[str, Any]
    seed: int | None
    state: TrialState  # COMPLETE, PRUNED or FAIL
    fixed: dict[str, Any] = field(default_factory=dict)
    # The search's objective: the best smoothed evaluation return of a complete trial
    objective: float | None = None
    best_smoothed_return: float | None = None
    best_eval_return: float | None = None
    last_eval_return: float | None = None
    evaluations: int = 0
    steps: int = 0
    frames: int = 0
    wall_time_s: float | None = None
    fail_reason: str | None = None
    device: str | None = None
    peak_memory_mib: float | None = None
    # The checkpoint of an earlier try that this one continued from
    resumed_from: str | None = None
    # Why newer checkpoints of the earlier tries were skipped (unreadable: a kill or a full disk during their write)
    resume_note: str | None = None
    overrides: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        number: int,
        params: dict[str, Any],
        seed: int | None,
        state: TrialState,
        history: list[HistoryRow],
        **kwargs: Any,
    ) -> TrialResult:
        """The result of a trial that ended in `state` after the evaluations of `history`."""
        best = max((r.smoothed_return for r in history), default=None)
        return cls(
            number=number,
            params=params,
            seed=seed,
            state=state,
            objective=best if state == TrialState.COMPLETE else None,
            best_smoothed_return=best,
            best_eval_return=max((r.eval_return for r in history), default=None),
            last_eval_return=history[-1].eval_return if history else None,
            evaluations=len(history),
            **{"steps": history[-1].step if history else 0, "frames": history[-1].frames if history else 0, **kwargs},
        )

    def value(self, objective: str) -> float:
        """The value of one of --objectives."""
        return float(getattr(self, OBJECTIVES[objective].field))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({**dataclasses.asdict(self), "state": self.state.name}, indent=2))

    @classmethod
    def load(cls, path: Path) -> TrialResult:
        d = json.loads(path.read_text())
        return cls(**{**d, "state": TrialState[d["state"]]})
