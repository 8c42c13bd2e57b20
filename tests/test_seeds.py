"""The environment seeds of a search: what its trials and the confirmation's runs train and evaluate on never meet."""

from __future__ import annotations

from itertools import combinations

import pytest

from jepa_dreamer import seeds
from jepa_search.seeds import confirmation_seeds, trial_seed
from tests.helpers import settings_from_argv


def _environment_seeds(runs: list[int], n_envs: int, eval_envs: int, evaluations: int) -> tuple[set[int], set[int]]:
    """The training and evaluation environment seeds of runs of the seeds `runs`."""
    training = {s for run in runs for s in seeds.training(run, n_envs)}
    evaluation = {s for run in runs for i in range(evaluations + 1) for s in seeds.evaluation(run, eval_envs, i)}
    return training, evaluation


@pytest.mark.parametrize("seed0", [0, 7])
def test_search_and_confirmation_training_and_evaluation_seeds_never_meet(seed0):
    argv = ["--env", "dmc", "--full-steps", "1000000", "--fidelity-frac", "0.15", "--n-trials", "20"]
    argv += ["--eval-every", "10000", "--eval-episodes", "10", "--confirm-top-k", "3", "--confirm-seeds", "5"]
    settings = settings_from_argv([*argv, "--seed0", str(seed0), "--output-dir", "/tmp/unused"])
    n_envs, eval_envs, evaluations = 4, 10, settings.n_evaluations  # DMC walker's 4 environments, 10 episodes at once
    # Every trial of the search, retries included (they train on their first try's seed), and the confirmation's runs
    search = [trial_seed(seed0, n) for n in range(settings.n_trials)]
    confirmation = confirmation_seeds(seed0, settings.confirm_seeds)
    sets = {
        "search training": _environment_seeds(search, n_envs, eval_envs, evaluations)[0],
        "search evaluation": _environment_seeds(search, n_envs, eval_envs, evaluations)[1],
        "confirmation training": _environment_seeds(confirmation, n_envs, eval_envs, evaluations)[0],
        "confirmation evaluation": _environment_seeds(confirmation, n_envs, eval_envs, evaluations)[1],
    }
    assert all(len(s) > n_envs for s in sets.values())
    for (a, sa), (b, sb) in combinations(sets.items(), 2):
        assert not sa & sb, f"{a} and {b} share environment seeds {sorted(sa & sb)[:5]}"
