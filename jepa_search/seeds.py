"""The seeds of a search's runs. A run of seed `s` trains on the environment seeds from `s` on and evaluates on those
from `s + EVAL_OFFSET` on (`jepa_dreamer/seeds.py`). The search's trials train on `seed0 + n` (n: the trial's root
number, so that a retry trains its configuration on the same seed), the confirmation's runs on
`seed0 + CONFIRMATION_OFFSET + i`: the environment seeds of search training, search evaluation, confirmation training
and confirmation evaluation are then four disjoint ranges, while trials, seeds and evaluations number fewer than
`EVAL_OFFSET` (`tests/test_seeds.py`)."""

from __future__ import annotations

from jepa_dreamer.seeds import EVAL_OFFSET

# Past the search's evaluation seeds; the confirmation's evaluation seeds follow at 3 · EVAL_OFFSET
CONFIRMATION_OFFSET = 2 * EVAL_OFFSET


def trial_seed(seed0: int, root_number: int) -> int:
    """The seed of a search trial whose configuration was first tried as trial `root_number`."""
    return seed0 + root_number


def confirmation_seeds(seed0: int, count: int) -> list[int]:
    """The seeds every configuration of the confirmation trains on (the same for all, so that they compare)."""
    return [seed0 + CONFIRMATION_OFFSET + i for i in range(count)]
