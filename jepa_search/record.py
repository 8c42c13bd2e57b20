"""What a trial keeps in the study, typed: `TrialRecord.of(trial)` reads it, `write` writes it; the study's own
attributes (its settings, the confirmation's budget) likewise. The only module that names an attribute key.

Optuna's `FrozenTrial` holds the state, parameters and values; what this tool adds (the seed, which process claimed
the trial and in which folder, the checkpoint it resumed, the summary of its result, its learning curve, a
confirmation run's configuration) lives in the trial's user attributes, under the keys studies of every earlier
version of the tool stored, so that a search resumes across upgrades. A retry inherits the user attributes of its
first try: a claim is the trial's own only when it names the trial's number.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from jepa_search.host import WorkerId
from jepa_search.results import TrialResult
from jepa_search.space import CONTROL_PARAMS

_SEED = "seed"
_CURVE = "smoothed_returns"
_WORKER = "worker"
_RESUMED = "resumed_from"
_COMPILE = "compile"
_NOT_TRAINED = "not_trained"
_FAIL_REASON = "fail_reason"
_CONTROL = "control"
_RUN = "confirm_run"
# The summary of a trial's results.json (`TrialSummary`), one attribute per field
_SUMMARY = (
    "best_eval_return",
    "best_smoothed_return",
    "last_eval_return",
    "evaluations",
    "steps",
    "frames",
    "wall_time_s",
    "device",
    "peak_memory_mib",
)
# The study's attributes: its settings (`StudyConfig.fingerprint`), and a confirmation study's budget per run
_SETTINGS = "settings"
_CONFIRM_STEPS = "confirm_steps"
_UNSET: Any = object()


@dataclass(frozen=True)
class Claim:
    """The process that trains a trial, and the trial's folder relative to the output folder."""

    worker: WorkerId
    folder: str


@dataclass(frozen=True)
class ConfirmRun:
    """A confirmation run: a configuration (`label`, the search trial it comes from, its parameters) on one seed."""

    label: str
    source_trial: int | None
    params: dict[str, Any]
    seed: int

    def key(self) -> tuple[str, int]:
        """Two runs of the same configuration and seed are the same run."""
        return json.dumps(self.params, sort_keys=True), self.seed

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConfirmRun:
        return cls(d["label"], d["source_trial"], dict(d["params"]), int(d["seed"]))


@dataclass(frozen=True)
class TrialSummary:
    """What the study keeps of a trial's results.json (the numbers results.csv shows)."""

    best_eval_return: float | None = None
    best_smoothed_return: float | None = None
    last_eval_return: float | None = None
    evaluations: int | None = None
    steps: int | None = None
    frames: int | None = None
    wall_time_s: float | None = None
    device: str | None = None
    peak_memory_mib: float | None = None

    @classmethod
    def of(cls, result: TrialResult) -> TrialSummary:
        return cls(**{name: getattr(result, name) for name in _SUMMARY})


@dataclass(frozen=True)
class TrialRecord:
    """A trial of the search or of its confirmation, as the study holds it."""

    number: int
    state: TrialState
    # The JEPA parameters it trains with: its Optuna parameters, or the control's
    params: dict[str, Any]
    values: tuple[float, ...] | None
    control: bool = False
    seed: int | None = None
    claim: Claim | None = None
    # The compiled route it trained with (its Phase 2 run trains on the same one)
    compile: str = "off"
    resumed_from: str | None = None
    # Ended before training because nothing was left to run: failed, never retried
    not_trained: bool = False
    fail_reason: str | None = None
    summary: TrialSummary = field(default_factory=TrialSummary)
    # The smoothed return after each evaluation so far
    curve: tuple[float, ...] = ()
    run: ConfirmRun | None = None

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        control = bool(attrs.get(_CONTROL))
        worker = attrs.get(_WORKER)
        # The claim of an earlier try (inherited by a retry) is not this trial's
        claim = (
            Claim(WorkerId.from_dict(worker), worker["dir"])
            if worker is not None and worker.get("trial") == trial.number
            else None
        )
        return cls(
            number=trial.number,
            state=trial.state,
            params=dict(CONTROL_PARAMS) if control else dict(trial.params),
            values=tuple(trial.values) if trial.values is not None else None,
            control=control,
            seed=attrs.get(_SEED),
            claim=claim,
            compile=attrs.get(_COMPILE, "off"),
            resumed_from=attrs.get(_RESUMED),
            not_trained=bool(attrs.get(_NOT_TRAINED)),
            fail_reason=attrs.get(_FAIL_REASON),
            summary=TrialSummary(**{name: attrs.get(name) for name in _SUMMARY}),
            curve=tuple(attrs.get(_CURVE, ())),
            run=ConfirmRun.from_dict(attrs[_RUN]) if _RUN in attrs else None,
        )

    @property
    def value(self) -> float | None:
        """A complete trial's first objective, the best smoothed evaluation return (in both kinds of study)."""
        return self.values[0] if self.state == TrialState.COMPLETE and self.values else None

    @property
    def is_run(self) -> bool:
        """A confirmation trial that trained (or is to train) a run, not one that ended with nothing to run."""
        return self.run is not None and not self.not_trained


def is_control(trial: FrozenTrial | optuna.Trial) -> bool:
    """The control trial is queued without parameters (its coefficient lies outside the categorical choices) and
    marked in its user attributes, which its retries inherit. Also for a live trial, before it has a record."""
    return bool(trial.user_attrs.get(_CONTROL))


def confirm_run(trial: optuna.Trial) -> ConfirmRun | None:
    """The run a live confirmation trial was queued with (None: it was not queued with one)."""
    run = trial.user_attrs.get(_RUN)
    return ConfirmRun.from_dict(run) if run is not None else None


def write(
    trial: optuna.Trial,
    *,
    claim: Claim | None = _UNSET,
    seed: int = _UNSET,
    compile: str = _UNSET,
    resumed_from: str | None = _UNSET,
    curve: list[float] = _UNSET,
    result: TrialResult = _UNSET,
    fail_reason: str = _UNSET,
    not_trained: bool = _UNSET,
) -> None:
    """Store part of a trial's record (the fields given). A claim is one attribute: a kill cannot come between the
    process and the folder."""
    if claim is not _UNSET:
        trial.set_user_attr(_WORKER, {**claim.worker.as_dict(), "trial": trial.number, "dir": claim.folder})
    for key, value in ((_SEED, seed), (_COMPILE, compile), (_RESUMED, resumed_from), (_CURVE, curve)):
        if value is not _UNSET:
            trial.set_user_attr(key, value)
    if result is not _UNSET:
        for key, value in {_SEED: result.seed, **asdict(TrialSummary.of(result))}.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(_FAIL_REASON, result.fail_reason)
    if fail_reason is not _UNSET:
        trial.set_user_attr(_FAIL_REASON, fail_reason)
    if not_trained is not _UNSET:
        trial.set_user_attr(_NOT_TRAINED, not_trained)


def enqueue_control(study: optuna.Study) -> None:
    study.enqueue_trial({}, user_attrs={_CONTROL: True})


def enqueue_run(study: optuna.Study, run: ConfirmRun) -> None:
    study.enqueue_trial({}, user_attrs={_RUN: asdict(run)})


def records(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[TrialRecord]:
    return [TrialRecord.of(t) for t in study.get_trials(deepcopy=False, states=states)]


def store_settings(study: optuna.Study, fingerprint: dict[str, Any]) -> None:
    study.set_user_attr(_SETTINGS, fingerprint)


def is_bare(study: optuna.Study) -> bool:
    """Made and nothing more: no settings nor other user attributes, no trials."""
    return not study.user_attrs and not study.get_trials(deepcopy=False)


def stored_settings(study: optuna.Study) -> dict[str, Any] | None:
    """The settings a study was made with (None: it was not made by this tool)."""
    return study.user_attrs.get(_SETTINGS)


def store_confirm_steps(study: optuna.Study, steps: int) -> None:
    study.set_user_attr(_CONFIRM_STEPS, steps)


def stored_confirm_steps(study: optuna.Study) -> int | None:
    return study.user_attrs.get(_CONFIRM_STEPS)


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial of the study, read from its storage: with Hyperband a sampler is handed a study that shows one
    bracket only (Optuna's BruteForceSampler reads the storage so too). The one use of Optuna's private storage."""
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


def live_trial(study: optuna.Study, number: int) -> optuna.Trial:
    """A trial of the study by number, to report to and store in from another process (`train_wrapper.py`)."""
    return optuna.Trial(study, study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def fail_running(study: optuna.Study, number: int) -> FrozenTrial | None:
    """Fail a running trial whose worker is gone; the trial as failed, or None when another worker failed it
    first."""
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    try:
        if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return copy.deepcopy(storage.get_trial(trial_id))
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    return None


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The study's own storage object: the report reads the confirmation study through it (no second connection,
    and every call still rides out an outage)."""
    return study._storage
