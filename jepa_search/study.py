"""The Optuna study: storage (with heartbeats and retries), sampler, pruner, and the settings stored with it.

Nothing here knows about DreamerV3: it turns `SearchSettings` into an Optuna study that several processes (or
machines, with a PostgreSQL URL) can share, and that a new run of the same command resumes.
"""

from __future__ import annotations

import copy
import datetime
import functools
import itertools
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from jepa_search.host import WorkerId
from jepa_search.results import OBJECTIVES, TrialResult, read_history, run_dir_name, trial_dir_name
from jepa_search.sampler import DistinctSampler
from jepa_search.settings import SearchSettings, mask_password
from jepa_search.space import CONTROL_ATTR, configuration, is_control
from jepa_search.storage import PatientStorage, pool_sizes
from jepa_search.validate import UsageError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SETTINGS_ATTR = "settings"
# The confirmation runs live in a study of their own beside the search's, which stores their budget
CONFIRM_SUFFIX = "-confirm"
CONFIRM_STEPS_ATTR = "confirm_steps"
# A trial that ended before training because nothing was left to run: failed, never retried
NOT_TRAINED_ATTR = "not_trained"
# The compiled route a trial trained with (--compile, resolved on its worker's device)
COMPILE_ATTR = "compile"
# The checkpoint of an earlier try that the trial continues from (None: it trains from scratch)
RESUMED_ATTR = "resumed_from"
# The process training the trial and the trial's folder relative to the output folder (`WorkerId`, with the trial's
# number and "dir": a retry inherits its first try's attributes)
WORKER_ATTR = "worker"
CLAIM_TIMEOUT_S = 10.0
# The table every Optuna RDB storage has: a database with tables but without it is not a study database
OPTUNA_TABLE = "studies"


def make_storage(settings: SearchSettings) -> PatientStorage:
    """An RDB storage whose running trials send heartbeats: a trial whose process died is failed after two missed
    beats by the next worker that starts a trial, and re-queued with the same parameters (up to `max_retries`). Its
    calls ride out a database outage of up to `storage_timeout` seconds."""
    sqlite = settings.storage.startswith("sqlite")
    # SQLite: wait for the write lock instead of failing with "database is locked" when several workers share it;
    # transactions are begun by `_begin_immediate`, not by the driver. A server: test each pooled connection before
    # use (a restarted server closed them all), and keep few: `pool_connections`
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60, "isolation_level": None}}
        if sqlite
        else {"pool_pre_ping": True, **pool_sizes(settings.trials_per_process)}
    )
    for attempt in itertools.count(1):
        try:
            storage = PatientStorage(
                settings.storage,
                settings.storage_timeout,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=settings.heartbeat_interval,
                grace_period=2 * settings.heartbeat_interval,
                heartbeat_stale_trial_callback=functools.partial(_on_stale, settings),
            )
            if sqlite:
                event.listen(storage.engine, "begin", _begin_immediate)
            return storage
        except SQLAlchemyError as e:
            # Workers started together on a new database race to create its tables ("table ... already exists") and
            # to stamp its schema version (a unique row): the losers find both made at their next try
            if attempt == 3 or not (isinstance(e, IntegrityError) or "already exists" in str(e)):
                raise
            time.sleep(0.5)


def _begin_immediate(connection: Connection) -> None:
    """Each SQLite transaction takes the write lock as it begins. The driver would begin it only at the first update,
    after the reads: two workers could then both read a queued trial as WAITING and both take it."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _on_stale(settings: SearchSettings, study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial (or confirmation run) whose worker died: write its results.json (as failed), then queue it again."""
    claimed = trial_folder(trial)
    if claimed is not None:
        folder = settings.output_dir / claimed
    else:  # its worker died before claiming it: the folder its study would have given it
        confirmation = study.study_name.endswith(CONFIRM_SUFFIX)
        folder = settings.output_dir / (run_dir_name if confirmation else trial_dir_name)(trial.number)
    reason = "its worker stopped (killed?); queued again with the same parameters"
    history = read_history(folder / "history.csv")
    folder.mkdir(parents=True, exist_ok=True)
    seed = trial.user_attrs.get("seed")
    resumed = trial.user_attrs.get(RESUMED_ATTR) if claimed is not None else None
    TrialResult.of(
        trial.number, configuration(trial), seed, "FAIL", history, fail_reason=reason, resumed_from=resumed
    ).save(folder / "results.json")
    retry_callback(settings)(study, trial)


def _claim(trial: FrozenTrial) -> dict[str, Any] | None:
    """The trial's own claim (made at the start of the objective), not one inherited from an earlier try."""
    claim = trial.user_attrs.get(WORKER_ATTR)
    return claim if claim is not None and claim.get("trial") == trial.number else None


def worker_of(trial: FrozenTrial) -> WorkerId | None:
    """The process that trains `trial`, when it claimed it."""
    claim = _claim(trial)
    return WorkerId.from_dict(claim) if claim is not None else None


def trial_folder(trial: FrozenTrial) -> str | None:
    """The trial's folder relative to the output folder, when it claimed it."""
    claim = _claim(trial)
    return claim["dir"] if claim is not None else None


def fail_lost_trials(study: optuna.Study) -> None:
    """Fail the running trials whose worker is gone, and queue them again (the storage's stale callback): at once
    when the worker ran on this host and its process no longer exists, or never claimed the trial, else after two
    missed heartbeats."""
    storage = study._storage
    dead = []
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = worker_of(trial)
        # A live process claims its trial within milliseconds of starting it: one that never did died first
        unclaimed = worker is None and (now - trial.datetime_start).total_seconds() > CLAIM_TIMEOUT_S
        if not unclaimed and (worker is None or worker.is_alive()):
            continue
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                dead.append(trial._trial_id)
        except UpdateFinishedTrialError:
            pass  # another worker failed it first
    callback = storage.get_heartbeat_stale_trial_callback()
    for trial_id in dead:
        callback(study, copy.deepcopy(storage.get_trial(trial_id)))
    fail_stale_trials(study)


def retry_callback(settings: SearchSettings) -> RetryHeartbeatStaleTrialCallback:
    return RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retries)


def root_number(trial: FrozenTrial) -> int:
    """The number of the first try of a trial's configuration: its retries keep its seed."""
    history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return int(history[0]) if history else trial.number


def make_sampler(settings: SearchSettings) -> DistinctSampler:
    """Random or TPE proposals, seeded with `seed0` + the trial number, that skip the configurations tried already."""
    base = optuna.samplers.TPESampler if settings.sampler == "tpe" else optuna.samplers.RandomSampler
    return DistinctSampler(settings.space, lambda seed: base(seed=seed), settings.seed0)


def make_pruner(name: str, grace_evaluations: int, n_evaluations: int) -> optuna.pruners.BasePruner:
    """Steps are evaluation indices (1, 2, ...); no trial is pruned before `grace_evaluations` of them."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=grace_evaluations, max_resource=max(n_evaluations, grace_evaluations)
        )
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=grace_evaluations)
    return optuna.pruners.NopPruner()


def settings_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [
        f"{k}: stored {stored.get(k)!r}, now {current.get(k)!r}"
        for k in sorted(set(stored) | set(current))
        if stored.get(k) != current.get(k)
    ]


def check_resumable(settings: SearchSettings) -> None:
    """If the study exists, its stored settings must match (and a confirmation's budget); `--confirm-only` needs it
    to exist. Raises `UsageError` naming the differences. Creates nothing: a missing SQLite file is left missing."""
    missing = UsageError(
        f"--confirm-only: there is no study {settings.study_name} in {mask_password(settings.storage)}; run the "
        "search first (the same command without --confirm-only)"
    )
    if settings.storage.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        if not Path(make_url(settings.storage).database).exists():
            if settings.confirm_only:
                raise missing
            return
    masked = mask_password(settings.storage)
    engine = create_engine(settings.storage)
    try:
        # A plain connection first: Optuna words a refused connection as a failed commit
        with engine.connect():
            pass
    except Exception as e:  # unreachable server, wrong credentials, missing driver
        cause = str(getattr(e, "orig", None) or e).strip().splitlines()[0][:200]
        raise UsageError(f"--storage {masked}: cannot connect ({cause})") from e
    try:
        tables = set(inspect(engine).get_table_names())
        # A new database (no tables at all) holds no study: the first worker's `open_study` creates the tables
        if OPTUNA_TABLE not in tables:
            storage, names = None, []
        else:
            storage = RDBStorage(settings.storage, skip_table_creation=True)
            names = optuna.get_all_study_names(storage)
    except Exception as e:  # corrupted file, a database of another Optuna version
        cause = str(e).splitlines()[0][:200]
        raise UsageError(f"--storage {masked}: cannot open it ({type(e).__name__}: {cause})") from e
    finally:
        engine.dispose()
    if tables and OPTUNA_TABLE not in tables:
        raise UsageError(
            f"--storage {masked}: the database holds tables that are not Optuna's ({', '.join(sorted(tables)[:5])}); "
            "give the search a database of its own"
        )
    if settings.study_name not in names:
        if settings.confirm_only:
            raise missing
        return
    study = optuna.load_study(study_name=settings.study_name, storage=storage)
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        raise UsageError(f"--study-name {settings.study_name} exists but was not made by this tool; pick another name")
    current = settings.fingerprint()
    if diffs := settings_differences(stored, current):
        raise UsageError(
            f"study {settings.study_name} was started with other settings ({'; '.join(diffs)}); "
            "rerun with the stored values or use a new --study-name/--output-dir"
        )
    confirm_name = confirm_study_name(settings.study_name)
    if settings.confirm_top_k and confirm_name in names:
        steps = optuna.load_study(study_name=confirm_name, storage=storage).user_attrs.get(CONFIRM_STEPS_ATTR)
        if steps != settings.confirm_steps:
            raise UsageError(
                f"--confirm-steps {settings.confirm_steps}: the confirmation of {settings.study_name} trains {steps} "
                f"steps per run; use --confirm-steps {steps} (runs of other budgets do not compare)"
            )


def open_study(settings: SearchSettings) -> optuna.Study:
    """Create the study or load it (after `check_resumable`), with the sampler and pruner of `settings`.

    Only the worker whose creation succeeds (the storage refuses a second study of the name) stores the settings and
    queues the control, so the control is queued once however many workers start together or resume."""
    kwargs: dict[str, Any] = {
        "study_name": settings.study_name,
        "storage": make_storage(settings),
        "sampler": make_sampler(settings),
        "pruner": make_pruner(settings.pruner, settings.grace_evaluations, settings.n_evaluations),
    }
    try:
        study = optuna.create_study(directions=settings.directions, **kwargs)
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(**kwargs)
    _name_metrics(study, [OBJECTIVES[name].metric for name in settings.objectives])
    study.set_user_attr(SETTINGS_ATTR, settings.fingerprint())
    if settings.control:
        study.enqueue_trial({}, user_attrs={CONTROL_ATTR: True})
    return study


def _name_metrics(study: optuna.Study, names: list[str]) -> None:
    """Name the study's objectives, which optuna-dashboard shows (else "Objective 0"). Optuna marks the call
    experimental: its warning would tell a user nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def confirm_study_name(study_name: str) -> str:
    return study_name + CONFIRM_SUFFIX


def open_confirm_study(settings: SearchSettings) -> optuna.Study:
    """The study of the confirmation runs, in the search's storage: single-objective (the return), never pruned."""
    kwargs: dict[str, Any] = {
        "study_name": confirm_study_name(settings.study_name),
        "storage": make_storage(settings),
        "pruner": optuna.pruners.NopPruner(),
    }
    try:
        study = optuna.create_study(direction="maximize", **kwargs)
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(**kwargs)
    _name_metrics(study, [OBJECTIVES["return"].metric])
    study.set_user_attr(CONFIRM_STEPS_ATTR, settings.confirm_steps)
    return study


def load_confirm_study(study: optuna.Study) -> optuna.Study | None:
    """The confirmation study of a search, if there is one; it shares the search's storage."""
    storage = study._storage  # the search's own storage object: no second connection for the report
    name = confirm_study_name(study.study_name)
    if name not in optuna.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def search_return(trial: FrozenTrial) -> float:
    """A complete trial's first objective, the best smoothed evaluation return (in both kinds of study)."""
    return trial.values[0]


def ranked_complete(study: optuna.Study) -> list[FrozenTrial]:
    """The complete JEPA trials (not the control), best return first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted((t for t in complete if not is_control(t)), key=lambda t: -search_return(t))
