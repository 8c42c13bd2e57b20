"""The tries of a configuration: a failed try is queued again and keeps its checkpoint for its retry; once the
configuration is finished, the lineage removes the checkpoints and buffers of all its tries (not a trial's own
clean-up reaching into other trials' folders)."""

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from jepa_search.lineage import Lineage, root_number
from jepa_search.record import write


def _training_state(folder):
    paths = [folder / "run" / "version_0" / name for name in ("checkpoint", "memmap_buffer", "checkpoint_buffers")]
    for path in paths:
        path.mkdir(parents=True)
    return paths


def test_a_failed_try_is_retried_with_its_checkpoint_and_a_finished_configuration_cleans_every_try(tmp_path):
    lineage = Lineage(tmp_path, max_retries=2)
    study = optuna.create_study(study_name="s", direction="maximize")
    dist = {"jepa_coef": CategoricalDistribution([0.3, 1.0])}
    study.add_trial(create_trial(state=TrialState.FAIL, params={"jepa_coef": 1.0}, distributions=dist))
    first = study.trials[0]
    kept = _training_state(lineage.folder(study, 0))
    lineage.finished(study, first)
    assert all(path.exists() for path in kept)
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert root_number(retry) == 0 and lineage.earlier_tries(study, retry) == [tmp_path / "trial_0"]
    trial = study.ask()  # the retry, trained and complete
    write(trial, seed=0)
    study.tell(trial, 1.0)
    own = _training_state(lineage.folder(study, trial.number))
    lineage.finished(study, study.trials[trial.number])
    assert not any(path.exists() for path in kept + own)
    assert (tmp_path / "trial_0" / "run" / "version_0").exists()  # the folders and their files stay
    assert lineage.folder(optuna.create_study(study_name="s-confirm"), 3) == tmp_path / "confirm" / "run_3"


def test_a_try_that_ended_before_training_is_not_retried(tmp_path):
    study = optuna.create_study(study_name="s")
    trial = study.ask()
    write(trial, not_trained=True, fail_reason="SpaceExhausted: nothing left")
    study.tell(trial, state=TrialState.FAIL)
    Lineage(tmp_path, max_retries=2).finished(study, study.trials[0])
    assert len(study.trials) == 1
