"""Whether a worker starts a trial, waits or stops, and how it waits: the one rule (in the spirit of Optuna's
`MaxTrialsCallback`, shared by every worker) that the in-process loop (`driver.run_trials`) and the supervisor of
worker processes (`workers.run_workers`) both follow, and the one waiting loop both use.

A trial another worker runs counts, so that several workers stop together at `--n-trials` (or a few more when two
start a trial at the same moment); once the trials left all run elsewhere, a worker waits for them and takes over any
whose worker dies (they are queued again).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from jepa_search.progress import Progress
from jepa_search.record import TrialRecord
from jepa_search.sampler import untried_keys
from jepa_search.settings import SearchSettings
from jepa_search.study import FINISHED

# How long a waiting worker lets pass between two lines saying what it waits for
WAIT_NOTE_S = 60.0


class Action(enum.Enum):
    START = "start"
    WAIT = "wait"
    STOP = "stop"


@dataclass(frozen=True)
class Decision:
    """What a worker does next: train a trial, wait for the trials of other slots or workers (saying `why`), or
    stop."""

    action: Action
    why: str = ""


START, STOP = Decision(Action.START), Decision(Action.STOP)


def waiting_for(running: Sequence[FrozenTrial]) -> str:
    """Which trials a worker waits for, and where they run."""
    where = []
    for t in running:
        claim = TrialRecord.of(t).claim
        where.append(f"{t.number} ({claim.worker.host}:{claim.worker.pid})" if claim else f"{t.number} (?:?)")
    return f"waiting for {len(running)} trial(s) that other slots or workers run: {', '.join(where)}"


def _wait_or_stop(running: list[FrozenTrial]) -> Decision:
    return Decision(Action.WAIT, waiting_for(running)) if running else STOP


def failed_too_often(settings: SearchSettings, failures: int) -> bool:
    """Every trial failing (a broken environment, say) must not loop forever: each may fail and be retried."""
    return failures >= settings.n_trials * (settings.max_retries + 1)


def search_decision(trials: list[FrozenTrial], settings: SearchSettings, failures: int = 0) -> Decision:
    """The search's rule: stop once the study has `n_trials` finished (complete or pruned, every worker's and the
    control) or after too many failures in this process; wait when every trial left runs elsewhere or nothing is left
    to sample (no configuration is trained twice) while trials run; else start one."""
    finished = sum(t.state in FINISHED for t in trials)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if finished >= settings.n_trials or failed_too_often(settings, failures):
        return STOP
    waiting = any(t.state == TrialState.WAITING for t in trials)
    exhausted = not waiting and not untried_keys(trials, settings.space)
    if finished + len(running) >= settings.n_trials or exhausted:
        return _wait_or_stop(running)
    return START


def confirmation_decision(trials: list[FrozenTrial]) -> Decision:
    """The confirmation's rule: a queued run to train; else wait for the runs other workers train; else stop."""
    if any(t.state == TrialState.WAITING for t in trials):
        return START
    return _wait_or_stop([t for t in trials if t.state == TrialState.RUNNING])


class Waiter:
    """The waiting loop's pause: `poll_s` between two looks at the study (cut short by `stop`), and what it waits for
    said once a minute, not at every look."""

    def __init__(self, progress: Progress, poll_s: float, stop: threading.Event | None = None) -> None:
        self.progress = progress
        self.poll_s = poll_s
        self.stop = stop or threading.Event()
        self.noted = -float("inf")

    def pause(self) -> None:
        self.stop.wait(self.poll_s)

    def wait(self, why: str) -> None:
        """Say `why` (at most once a minute), then pause."""
        if time.monotonic() - self.noted >= WAIT_NOTE_S:
            self.progress(why)
            self.noted = time.monotonic()
        self.pause()

    def reset(self) -> None:
        """The wait is over: the next one is said at once."""
        self.noted = -float("inf")
