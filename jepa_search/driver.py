"""Trials of a study trained in this process, one after another in each of its slots, until a stop condition holds:
the loop the search and the confirmation share.

A slot is a thread: `--trials-per-process` of them train side by side, each trial with its own learner,
environments, buffer, evaluator and CUDA stream, so that on a GPU their kernels overlap (those of different
processes take turns). Optuna's semantics are a single worker's in each slot: a trial asks, reports, is pruned,
completes or fails on its own, and its slot takes the next one at once.

Before each decision (`schedule`), trials whose worker is gone are failed and queued again
(`study.fail_lost_trials`); a trial that fails is queued again with the same parameters (`lineage`). While the
trials left run in other slots or workers, the loop waits for them (and takes over any whose worker dies).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial

from jepa_search.objective import Objective
from jepa_search.progress import Progress
from jepa_search.schedule import Action, Decision, Waiter
from jepa_search.settings import SearchSettings
from jepa_search.study import fail_lost_trials

# How often a waiting slot looks at the study again
POLL_S = 2.0


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
