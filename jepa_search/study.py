"""The Optuna study: storage (with heartbeats and retries), sampler, pruner, and the settings stored with it.

Nothing here knows about DreamerV3: it turns `SearchSettings` into an Optuna study that several processes (or
machines, with a PostgreSQL URL) can share, and that a new run of the same command resumes.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine

from jepa_search.settings import SearchSettings, UsageError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SETTINGS_ATTR = "settings"


def make_storage(settings: SearchSettings) -> RDBStorage:
    """An RDB storage whose running trials send heartbeats: a trial whose process died is failed after two missed
    beats by the next worker that starts a trial, and re-queued with the same parameters (up to `max_retries`)."""
    sqlite = settings.storage.startswith("sqlite")
    # SQLite: wait for the write lock instead of failing with "database is locked" when several workers share it
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    return RDBStorage(
        settings.storage,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=2 * settings.heartbeat_interval,
        heartbeat_stale_trial_callback=functools.partial(_on_stale, settings),
    )


def _on_stale(settings: SearchSettings, study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose worker died: write its results.json (as failed), then queue it again."""
    from jepa_search.trial import record_stale, trial_dir_name

    record_stale(settings.output_dir / trial_dir_name(trial.number), trial)
    retry_callback(settings)(study, trial)


def retry_callback(settings: SearchSettings) -> RetryHeartbeatStaleTrialCallback:
    return RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retries)


def root_number(trial: FrozenTrial) -> int:
    """The number of the first try of a trial's configuration: its retries keep its seed."""
    history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return int(history[0]) if history else trial.number


def make_sampler(settings: SearchSettings, n_existing: int) -> optuna.samplers.BaseSampler:
    """Seeded from `seed0` and the number of trials already in the study, so that a resumed study draws new
    configurations instead of replaying the first run's sequence."""
    seed = settings.seed0 + n_existing
    if settings.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


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
    """If the study exists, its stored settings must match; raises `UsageError` naming the differences. Creates
    nothing: a missing SQLite file is left missing."""
    if settings.storage.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        if not Path(make_url(settings.storage).database).exists():
            return
    masked = settings.as_dict()["storage"]
    try:
        # A plain connection first: Optuna words a refused connection as a failed commit
        with create_engine(settings.storage).connect():
            pass
    except Exception as e:  # unreachable server, wrong credentials, missing driver
        cause = str(getattr(e, "orig", None) or e).strip().splitlines()[0][:200]
        raise UsageError(f"--storage {masked}: cannot connect ({cause})") from e
    try:
        storage = RDBStorage(settings.storage, skip_table_creation=True)
        names = optuna.get_all_study_names(storage)
    except Exception as e:  # corrupted file, foreign database
        cause = str(e).splitlines()[0][:200]
        raise UsageError(f"--storage {masked}: cannot open it ({type(e).__name__}: {cause})") from e
    if settings.study_name not in names:
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


def open_study(settings: SearchSettings) -> optuna.Study:
    """Create the study or load it (after `check_resumable`), with the sampler and pruner of `settings`."""
    storage = make_storage(settings)
    exists = settings.study_name in optuna.get_all_study_names(storage)
    if exists:
        n_existing = len(optuna.load_study(study_name=settings.study_name, storage=storage).get_trials(deepcopy=False))
    else:
        n_existing = 0
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=storage,
        direction="maximize",
        sampler=make_sampler(settings, n_existing),
        pruner=make_pruner(settings.pruner, settings.grace_evaluations, settings.n_evaluations),
        load_if_exists=True,
    )
    if not exists:
        study.set_user_attr(SETTINGS_ATTR, settings.fingerprint())
    return study


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))
