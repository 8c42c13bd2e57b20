"""The environments' seeds of a run of seed `s`: its training environments take s, s+1, ..., and its evaluator's
take a block of their own for every evaluation from `s + EVAL_OFFSET` on, so that a run never evaluates on the
episodes it trains on, nor a run on the training episodes of another whose seed is within `EVAL_OFFSET` of its own.
"""

from __future__ import annotations

EVAL_OFFSET = 1_000_000


def training(seed: int, n_envs: int, rank: int = 0) -> list[int]:
    """The seeds of the training environments of process `rank` of a run."""
    return [seed + rank * n_envs + i for i in range(n_envs)]


def evaluation(seed: int, n_envs: int, index: int) -> list[int]:
    """The seeds of the evaluator's environments at evaluation `index` (1-based; 0: when they are made)."""
    first = seed + EVAL_OFFSET + index * n_envs
    return list(range(first, first + n_envs))
