"""A trial's record in the study: written through `record.write`, read back by field, with the keys studies of
earlier versions stored (a search resumes across upgrades); and no other module names an attribute key."""

import re
from pathlib import Path

import optuna
from optuna.trial import TrialState

from jepa_search.host import WorkerId
from jepa_search.record import Claim, ConfirmRun, TrialRecord, enqueue_control, enqueue_run, write
from jepa_search.results import TrialResult

REPO = Path(__file__).resolve().parents[1]


def test_a_record_reads_back_what_was_written_under_the_stored_keys():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    me = WorkerId.current()
    write(trial, claim=Claim(me, "trial_0"), seed=7, compile="steps", resumed_from=None, curve=[1.0, 2.0])
    result = TrialResult.of(0, {}, 7, TrialState.COMPLETE, [], steps=64, wall_time_s=1.5, device="cpu")
    write(trial, result=result)
    study.tell(trial, 2.0)
    stored = study.trials[0].user_attrs
    # The keys every version of the tool stored
    assert stored["worker"] == {**me.as_dict(), "trial": 0, "dir": "trial_0"} and stored["seed"] == 7
    assert stored["smoothed_returns"] == [1.0, 2.0] and stored["steps"] == 64 and stored["fail_reason"] is None
    record = TrialRecord.of(study.trials[0])
    assert record.claim == Claim(me, "trial_0") and record.seed == 7 and record.compile == "steps"
    assert record.curve == (1.0, 2.0) and record.summary.steps == 64 and record.summary.wall_time_s == 1.5
    assert record.value == 2.0 and record.state == TrialState.COMPLETE and not record.control


def test_a_retry_inherits_its_first_try_s_claim_but_not_as_its_own():
    study = optuna.create_study()
    enqueue_control(study)
    run = ConfirmRun("control", 0, {"jepa_coef": 0.0}, 2_000_000)
    enqueue_run(study, run)
    first = study.ask()
    write(first, claim=Claim(WorkerId.current(), "trial_0"), not_trained=True, fail_reason="NothingToRun: x")
    study.tell(first, state=TrialState.FAIL)
    failed = study.trials[0]
    study.enqueue_trial({}, user_attrs=failed.user_attrs)  # as a retry is queued
    retry = TrialRecord.of(study.ask() and study.trials[2])
    assert TrialRecord.of(failed).claim is not None and retry.claim is None
    assert retry.control and retry.params == {"jepa_coef": 0.0} and retry.not_trained
    assert TrialRecord.of(study.trials[1]).run == run and run.key() == ConfirmRun.from_dict(vars(run)).key()


def test_no_module_but_the_record_names_an_attribute_key():
    named = re.compile(r"user_attrs|set_user_attr|system_attrs|set_system_attr|\._storage\b|\._trial_id")
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for path in [*(REPO / "jepa_search").rglob("*.py"), REPO / "train_wrapper.py", REPO / "search_phase1.py"]
        # storage.py wraps the storage's own methods (`set_trial_user_attr`, ...) for retries
        if path.name not in ("record.py", "storage.py")
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if named.search(line)
    ]
    assert not found, found
