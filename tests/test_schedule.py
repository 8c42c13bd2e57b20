"""The one rule every worker follows: start a trial, wait for the trials that run elsewhere, or stop."""

import optuna
from optuna.trial import TrialState

from jepa_search.host import WorkerId
from jepa_search.record import Claim, write
from jepa_search.schedule import START, STOP, Action, confirmation_decision, search_decision
from tests.helpers import settings_for


def test_a_worker_starts_while_trials_are_left_waits_while_the_last_run_elsewhere_and_stops_at_n_trials(tmp_path):
    s = settings_for(tmp_path, "--n-trials", "2")
    study = optuna.create_study(direction="maximize")
    assert search_decision(study.trials, s) == START
    first = study.ask()
    study.tell(first, 1.0)
    running = study.ask()
    write(running, claim=Claim(WorkerId.current(), "trial_1"))
    decision = search_decision(study.trials, s)
    assert decision.action == Action.WAIT and f"1 ({WorkerId.current().host}:" in decision.why
    study.tell(running, state=TrialState.PRUNED)  # pruned counts as finished
    assert search_decision(study.trials, s) == STOP
    # Every trial failing in this process stops it, whatever the study holds
    assert search_decision([], s, failures=2 * (s.max_retries + 1)) == STOP


def test_the_confirmation_trains_queued_runs_then_waits_for_those_elsewhere():
    study = optuna.create_study()
    study.enqueue_trial({})
    assert confirmation_decision(study.trials) == START
    trial = study.ask()
    assert confirmation_decision(study.trials).action == Action.WAIT
    study.tell(trial, 1.0)
    assert confirmation_decision(study.trials) == STOP
