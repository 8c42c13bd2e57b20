"""The Optuna study: storage (with heartbeats and retries), sampler, pruner, and the settings stored with it.

Nothing here knows about DreamerV3: it turns `SearchSettings` into an Optuna study that several processes (or
machines, with a PostgreSQL URL) can share, and that a new run of the same command resumes.
"""

from __future__ import annotations

import datetime
import itertools
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import TrialState
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from jepa_search.lineage import CONFIRM_SUFFIX, Lineage
from jepa_search.record import (
    TrialRecord,
    enqueue_control,
    fail_running,
    is_bare,
    records,
    storage_of,
    store_confirm_steps,
    store_settings,
    stored_confirm_steps,
    stored_settings,
)
from jepa_search.results import OBJECTIVES
from jepa_search.sampler import DistinctSampler
from jepa_search.settings import SearchSettings, mask_password
from jepa_search.storage import PatientStorage, pool_sizes
from jepa_search.validate import UsageError

T = TypeVar("T")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CLAIM_TIMEOUT_S = 10.0
# Making a study and storing its settings are two commits: how long a worker that finds a study without settings (and
# without trials) waits for its creator to store them before it takes the study over
CREATION_WAIT_S = 30.0
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

    def make() -> PatientStorage:
        storage = PatientStorage(
            settings.storage,
            settings.storage_timeout,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=2 * settings.heartbeat_interval,
            heartbeat_stale_trial_callback=Lineage(settings.output_dir, settings.max_retries).lost,
        )
        if sqlite:
            event.listen(storage.engine, "begin", _begin_immediate)
        return storage

    return _despite_creation_races(make)


def _despite_creation_races(make: Callable[[], T]) -> T:
    """`make()`, tried again while workers started together on a new database race to create its tables (one
    "already exists", or another does not yet) and to stamp its schema version (a unique row): the losers find them
    made at their next try."""
    for attempt in itertools.count(1):
        try:
            return make()
        except (SQLAlchemyError, StorageInternalError) as e:
            cause = e.__cause__ if isinstance(e, StorageInternalError) else e  # Optuna wraps the database's error
            racing = isinstance(cause, IntegrityError) or any(
                words in str(cause) for words in ("already exists", "does not exist", "no such table")
            )
            if attempt == 3 or not racing:
                raise
            time.sleep(0.5)


def _begin_immediate(connection: Connection) -> None:
    """Each SQLite transaction takes the write lock as it begins. The driver would begin it only at the first update,
    after the reads: two workers could then both read a queued trial as WAITING and both take it."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def fail_lost_trials(study: optuna.Study, lineage: Lineage) -> None:
    """Fail the running trials whose worker is gone, and queue them again (`Lineage.lost`): at once when the worker
    ran on this host and its process no longer exists, or never claimed the trial, else after two missed
    heartbeats (the storage's stale-trial callback, the same)."""
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        claim = TrialRecord.of(trial).claim
        # A live process claims its trial within milliseconds of starting it: one that never did died first
        unclaimed = claim is None and (now - trial.datetime_start).total_seconds() > CLAIM_TIMEOUT_S
        if not unclaimed and (claim is None or claim.worker.is_alive()):
            continue
        failed = fail_running(study, trial.number)
        if failed is not None:  # else another worker failed it first
            lineage.lost(study, failed)
    fail_stale_trials(study)


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
            storage = _despite_creation_races(lambda: RDBStorage(settings.storage, skip_table_creation=True))
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
    stored = _once_made(study, stored_settings)
    if stored is None and is_bare(study):
        if settings.confirm_only:
            raise missing
        return  # its creator stopped before storing the settings: `open_study` takes it over
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
        steps = _once_made(optuna.load_study(study_name=confirm_name, storage=storage), stored_confirm_steps)
        if steps is not None and steps != settings.confirm_steps:
            raise UsageError(
                f"--confirm-steps {settings.confirm_steps}: the confirmation of {settings.study_name} trains {steps} "
                f"steps per run; use --confirm-steps {steps} (runs of other budgets do not compare)"
            )


def open_study(settings: SearchSettings) -> optuna.Study:
    """Create the study or load it (after `check_resumable`), with the sampler and pruner of `settings`.

    Only the worker whose creation succeeds (the storage refuses a second study of the name) stores the settings and
    queues the control, so the control is queued once however many workers start together or resume; a study whose
    creator stopped before storing them is taken over by the next worker, once `CREATION_WAIT_S` has passed."""
    kwargs: dict[str, Any] = {
        "study_name": settings.study_name,
        "storage": make_storage(settings),
        "sampler": make_sampler(settings),
        "pruner": make_pruner(settings.pruner, settings.grace_evaluations, settings.n_evaluations),
    }
    try:
        study = optuna.create_study(directions=settings.directions, **kwargs)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
        if _once_made(study, stored_settings) is not None or not is_bare(study):
            return study
    _name_metrics(study, [OBJECTIVES[name].metric for name in settings.objectives])
    store_settings(study, settings.fingerprint())
    if settings.control:
        enqueue_control(study)
    return study


def _once_made(study: optuna.Study, read: Callable[[optuna.Study], T | None]) -> T | None:
    """What `read` finds in the study; for a bare study, what its creator is about to store, waited for up to
    `CREATION_WAIT_S` (None: not made by this tool, or bare still)."""
    deadline = time.monotonic() + CREATION_WAIT_S
    while (stored := read(study)) is None and is_bare(study) and time.monotonic() < deadline:
        time.sleep(0.2)
    return stored


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
        study = optuna.load_study(**kwargs)
        if _once_made(study, stored_confirm_steps) is not None or not is_bare(study):
            return study
    _name_metrics(study, [OBJECTIVES["return"].metric])
    store_confirm_steps(study, settings.confirm_steps)
    return study


def load_confirm_study(study: optuna.Study) -> optuna.Study | None:
    """The confirmation study of a search, if there is one; it shares the search's storage."""
    storage = storage_of(study)
    name = confirm_study_name(study.study_name)
    if name not in optuna.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def ranked_complete(study: optuna.Study) -> list[TrialRecord]:
    """The complete JEPA trials (not the control), best return first."""
    complete = records(study, (TrialState.COMPLETE,))
    return sorted((r for r in complete if not r.control), key=lambda r: -r.value)
