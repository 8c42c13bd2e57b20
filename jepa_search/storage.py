"""Optuna's RDB storage, riding out a database outage: every call retries a lost connection with backoff.

A search runs for days on shared machines, and database servers restart (maintenance, a fail-over, a full disk
cleared). Optuna gives up on the first lost connection (`StorageInternalError`), which kills the worker and leaves
its trial RUNNING. Here every storage call of a worker (ask, report, tell, heartbeats, attributes, the report's
reads) tries again, with a growing pause, for up to `timeout` seconds; past that, `StorageUnavailable`, and every
later call of the process fails at once with it, so that the worker ends with one line (`cli.main`) and its trial
resumes from its checkpoint when the command is run again.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)
# The pause after the first failed try, doubled after each further one up to the longest
FIRST_PAUSE_S, LONGEST_PAUSE_S = 0.5, 10.0
# Exit code of a worker that gave up on the storage: EX_TEMPFAIL, "try again later" (sysexits.h)
EXIT_STORAGE = 75

T = TypeVar("T")


def pool_sizes(trials_per_process: int) -> dict[str, int]:
    """SQLAlchemy's pool of one worker process: a connection kept open, and at most one per thread that may reach
    the database at once (each trial's own thread and its heartbeat thread). SQLAlchemy's default keeps 5 and opens
    up to 15, which a few dozen workers would take past PostgreSQL's `max_connections` (100)."""
    return {"pool_size": 1, "max_overflow": 2 * trials_per_process - 1}


class StorageUnavailable(BaseException):
    """The database stayed out of reach past `--storage-timeout`. A BaseException, like an interrupt: Optuna must not
    record the trial as failed (it cannot reach the database anyway), and nothing on the way may swallow it."""


def lost_connection(error: BaseException) -> bool:
    """Whether `error` (or what caused it: Optuna wraps the driver's errors) is a connection the database lost or
    refused, which a later try can succeed on."""
    while error is not None:
        if isinstance(error, OperationalError) or (isinstance(error, DBAPIError) and error.connection_invalidated):
            return True
        error = error.__cause__
    return False


class PatientStorage(RDBStorage):
    """`RDBStorage` whose calls retry a lost connection for up to `timeout` seconds (see the module's docstring)."""

    def __init__(self, url: str, timeout: float, **kwargs: Any) -> None:
        self.timeout = timeout
        # Why this process gave up on the storage (set once, by whichever thread first waited out the timeout)
        self.gave_up: str | None = None
        super().__init__(url, **kwargs)

    def _patiently(self, call: Callable[[], T], name: str) -> T:
        if self.gave_up is not None:
            raise StorageUnavailable(self.gave_up)
        started, pause, tries = time.monotonic(), FIRST_PAUSE_S, 0
        while True:
            try:
                result = call()
            except (StorageInternalError, OperationalError, DBAPIError) as e:
                if not lost_connection(e):
                    raise
                waited = time.monotonic() - started
                cause = str(getattr(e.__cause__, "orig", None) or e.__cause__ or e).strip().splitlines()[0][:160]
                if waited >= self.timeout or self.gave_up is not None:
                    self.gave_up = self.gave_up or (
                        f"the storage did not answer for {waited:.0f} s (--storage-timeout {self.timeout:g}; "
                        f"{cause}); rerun the same command once it is back: the trials resume"
                    )
                    raise StorageUnavailable(self.gave_up) from e
                if tries == 0:
                    log.warning(
                        f"storage: lost the connection in {name} ({cause}); retrying for up to {self.timeout:g} s"
                    )
                tries += 1
                time.sleep(min(pause, max(0.0, self.timeout - waited)))
                pause = min(2 * pause, LONGEST_PAUSE_S)
                continue
            if tries:
                log.warning(f"storage: {name} went through after {time.monotonic() - started:.1f} s")
            return result

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        # A try whose commit went through but whose answer was lost: the next try finds the trial finished, as asked
        first = True

        def call() -> bool:
            nonlocal first
            again, first = not first, False
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if again and RDBStorage.get_trial(self, trial_id).state == state:
                    return True
                raise

        return self._patiently(call, "set_trial_state_values")

    def record_heartbeat(self, trial_id: int) -> None:
        # Optuna's heartbeat thread would die with a traceback: the trial's own thread says it at its next call
        try:
            self._patiently(functools.partial(RDBStorage.record_heartbeat, self, trial_id), "record_heartbeat")
        except StorageUnavailable:
            pass


def _retried(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def patient(self: PatientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._patiently(functools.partial(method, self, *args, **kwargs), name)

    return patient


# Every call that reaches the database (those of RDBStorage itself, which the inherited ones go through)
for _name in (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
    "_get_stale_trial_ids",
):
    setattr(PatientStorage, _name, _retried(_name))
