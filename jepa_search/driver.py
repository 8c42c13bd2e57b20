"""Trials of a study trained one after another in this process, until a stop condition holds: the loop the search
and the confirmation share.

Before each decision, trials whose worker is gone are failed and queued again (`study.fail_lost_trials`); a trial
that fails is queued again with the same parameters (up to --max-retries), unless it ended before training. While
the trials left run in other workers, the loop waits for them (and takes over any whose worker dies).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from jepa_search.progress import Progress
from jepa_search.settings import SearchSettings
from jepa_search.study import NOT_TRAINED_ATTR, WORKER_ATTR, fail_lost_trials, retry_callback

# How often a waiting loop looks at the study again, and how often it says what it waits for
POLL_S = 2.0
WAIT_NOTE_S = 60.0


@dataclass(frozen=True)
class Decision:
    """What the loop does next: train a trial (`start`), wait for other workers' trials (`wait`, saying `why`),
    or stop."""

    action: str
    why: str = ""


START, STOP = Decision("start"), Decision("stop")


def waiting_for(running: list[FrozenTrial]) -> str:
    """Which trials a loop waits for, and where they run."""
    where = []
    for t in running:
        worker = t.user_attrs.get(WORKER_ATTR) or {}
        where.append(f"{t.number} ({worker.get('host', '?')}:{worker.get('pid', '?')})")
    return f"waiting for {len(running)} trial(s) running in other workers: {', '.join(where)}"


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | tuple[float, ...]],
    settings: SearchSettings,
    decide: Callable[[optuna.Study], Decision],
    on_finished: Callable[[optuna.Study, FrozenTrial], None],
    progress: Progress,
) -> None:
    """Train trials of `study` with `objective` while `decide` says so; `on_finished` after each."""
    retry = retry_callback(settings)

    def finished(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get(NOT_TRAINED_ATTR):
            retry(study, trial)
        on_finished(study, trial)

    noted = -float("inf")
    while True:
        fail_lost_trials(study)
        decision = decide(study)
        if decision.action == "stop":
            return
        if decision.action == "wait":
            if time.monotonic() - noted >= WAIT_NOTE_S:
                progress(decision.why)
                noted = time.monotonic()
            time.sleep(POLL_S)
            continue
        noted = -float("inf")
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[finished])
