"""A sampler that never proposes a configuration another trial of the study already holds.

RL returns are noisy and the space is small (18 configurations by default): plain random sampling of 20 trials
repeats several of them, which spends GPU-hours on a second seed of one configuration instead of a new one. The
sampler reads every trial from the storage, so it works across resumes and for several workers on one study.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from jepa_search.record import all_trials, is_control
from jepa_search.space import SearchSpace

# Proposals of the wrapped sampler tried before drawing uniformly among the untried configurations (a converged TPE
# keeps proposing the best ones)
PROPOSALS = 100
# How long a trial waits for lower-numbered trials to take their configuration (milliseconds after they start,
# unless their worker died right then)
SETTLE_TIMEOUT_S = 30.0


class SpaceExhausted(RuntimeError):
    """Every configuration is trained or being trained: a trial started at the same moment by another worker."""


def config_key(params: dict[str, Any], space: SearchSpace) -> tuple[Any, ...] | None:
    """A trial's configuration as a hashable key; None for a trial without all of the space's parameters."""
    if not set(space.variable) <= set(params):
        return None
    return tuple(params[name] for name in space.variable)


def all_keys(space: SearchSpace) -> list[tuple[Any, ...]]:
    return list(itertools.product(*space.variable.values()))


def untried_keys(trials: list[FrozenTrial], space: SearchSpace) -> list[tuple[Any, ...]]:
    """The configurations no trial holds (in any state: a failed one was trained once already)."""
    tried = {config_key(t.params, space) for t in trials}
    return [key for key in all_keys(space) if key not in tried]


class DistinctSampler(BaseSampler):
    """Proposes the whole configuration at once (`sample_relative`): the wrapped sampler's proposals of tried
    configurations are skipped. The wrapped sampler is made per trial, seeded with seed0 + the trial number, so that
    workers that start at the same moment draw differently and a resumed study draws anew; and a trial first waits
    until the lower-numbered ones hold their configuration, so that two workers cannot take the same one."""

    def __init__(self, space: SearchSpace, make_base: Callable[[int], BaseSampler], seed0: int) -> None:
        self.space = space
        self.make_base = make_base
        self.seed0 = seed0
        self.distributions = {name: CategoricalDistribution(list(c)) for name, c in space.variable.items()}

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self.distributions)

    def _settled_others(self, study: optuna.Study, number: int) -> list[FrozenTrial]:
        """Every other trial, once those started before `number` hold their configuration (or after a timeout).
        Read from the storage: with Hyperband, `study` shows one bracket only (as in Optuna's BruteForceSampler)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            trials = all_trials(study)
            unsettled = [
                t
                for t in trials
                if t.number < number and t.state == TrialState.RUNNING and not t.params and not is_control(t)
            ]
            if not unsettled or time.monotonic() > deadline:
                return [t for t in trials if t.number != number]
            time.sleep(0.05)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        untried = set(untried_keys(self._settled_others(study, trial.number), self.space))
        if not untried:
            raise SpaceExhausted("every configuration of the search space is trained or being trained; not trained")
        base = self.make_base(self.seed0 + trial.number)
        for _ in range(PROPOSALS):
            proposal = {n: base.sample_independent(study, trial, n, d) for n, d in search_space.items()}
            if config_key(proposal, self.space) in untried:
                return proposal
        choices = sorted(untried)
        key = choices[np.random.default_rng(self.seed0 + trial.number).integers(len(choices))]
        return dict(zip(self.space.variable, key, strict=True))

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.make_base(self.seed0 + trial.number).sample_independent(
            study, trial, param_name, param_distribution
        )
