"""The scheduling around Optuna, in one place: whether a worker starts a trial, waits or stops (the one rule, in the
spirit of Optuna's `MaxTrialsCallback`, that this process's loop and the supervisor of worker processes,
`workers.run_workers`, both follow), the one waiting loop both use, and the loop that trains a study's trials in this
process (`run_trials`, which the search and the confirmation share).

A trial another worker runs counts, so that several workers stop together at `--n-trials` (or a few more when two
start a trial at the same moment); once the trials left all run elsewhere, a worker waits for them and takes over any
whose worker dies (they are queued again).

The loop's slots are threads: `--trials-per-process` of them train side by side, each trial with its own learner,
environments, buffer, evaluator and CUDA stream, so that on a GPU their kernels overlap (those of different
processes take turns). Optuna's semantics are a single worker's in each slot: a trial asks, reports, is pruned,
completes or fails on its own, and its slot takes the next one at once. Before each decision, trials whose worker is
gone are failed and queued again (`study.fail_lost_trials`); a trial that fails is queued again with the same
parameters (`lineage`).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from jepa_search.progress import Progress
from jepa_search.record import TrialRecord
from jepa_search.sampler import untried_keys
from jepa_search.settings import SearchSettings
from jepa_search.study import FINISHED, fail_lost_trials

if TYPE_CHECKING:  # the objective loads the training stack; the rules here need none of it
    from jepa_search.objective import Objective

# How long a waiting worker lets pass between two lines saying what it waits for
WAIT_NOTE_S = 60.0
# How often a waiting slot looks at the study again
POLL_S = 2.0


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


def run_trials(
    study: optuna.Study,
    objective: Objective,
    settings: SearchSettings,
    decide: Callable[[list[FrozenTrial]], Decision],
    on_finished: Callable[[optuna.Study, FrozenTrial], None],
    progress: Progress,
) -> None:
    """Train trials of `study` with `objective` while `decide` (a rule of `schedule`, on the study's trials) says
    so, `settings.trials_per_process` at once (each in a thread of its own: a slot); `on_finished` after each, one
    at a time.

    An interrupt (KeyboardInterrupt in this thread) cancels the trials of every slot, waits for them to end, and is
    raised again; so is any error of a slot outside its trials (they are caught by Optuna and fail the trial only).
    The trials they stopped are queued again.
    """
    lineage = objective.lineage
    # The trials this process has started and not finished, and the event that stops their training
    running: set[int] = set()
    cancel = threading.Event()
    # Deciding to start a trial and creating it in the storage go together, so that slots count each other's
    starting, finishing = threading.Lock(), threading.Lock()

    def finished(study: optuna.Study, trial: FrozenTrial) -> None:
        with finishing:
            lineage.finished(study, trial)
            on_finished(study, trial)

    def train(trial: optuna.Trial) -> float | tuple[float, ...]:
        running.add(trial.number)
        try:
            value = objective(trial, cancel)
        except KeyboardInterrupt:
            raise  # the trial stays in `running`: it is queued again below
        except BaseException:
            running.discard(trial.number)
            raise
        running.discard(trial.number)
        return value

    def slot() -> None:
        waiter = Waiter(progress, POLL_S, cancel)
        while not cancel.is_set():
            fail_lost_trials(study, lineage)
            starting.acquire()
            holding = True

            def created(trial: optuna.Trial) -> float | tuple[float, ...]:
                nonlocal holding
                holding = False
                starting.release()
                return train(trial)

            try:
                decision = decide(study.get_trials(deepcopy=False))
                if decision.action == Action.START:
                    waiter.reset()
                    study.optimize(created, n_trials=1, catch=(Exception,), callbacks=[finished])
                    continue
            finally:
                if holding:
                    starting.release()
            if decision.action == Action.STOP:
                return
            waiter.wait(decision.why)

    try:
        if settings.trials_per_process == 1:
            slot()
        else:
            _run_slots(slot, settings.trials_per_process, cancel)
    finally:
        # The trials an interrupt or an error stopped (Optuna failed them): queued again with the same parameters
        lineage.requeue(study, running)
        running.clear()


def _run_slots(slot: Callable[[], None], count: int, cancel: threading.Event) -> None:
    """`count` threads running `slot`; the first error of one (or an interrupt here) cancels the others."""
    errors: list[BaseException] = []
    ended = [threading.Event() for _ in range(count)]

    def guarded(i: int) -> None:
        try:
            slot()
        except KeyboardInterrupt:
            pass  # the slot's trial was cancelled: it ends with the others
        except BaseException as e:
            errors.append(e)
            cancel.set()
        finally:
            ended[i].set()

    def wait_for_all() -> None:
        # Timed waits on events, not `Thread.join`: a signal that interrupts a join can mark the thread as ended
        # while it still runs (CPython 3.11), and the trials it trains would be queued again before they fail
        for event in ended:
            while not event.wait(0.2):
                pass

    threads = [threading.Thread(target=guarded, args=(i,), name=f"slot{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        wait_for_all()
    except KeyboardInterrupt:
        cancel.set()
        wait_for_all()
        raise
    finally:
        for thread in threads:
            thread.join()  # past their slots' end
    if errors:
        raise errors[0]
