"""Shared set-up: DMC renders through EGL (set before dm_control is imported) and few CPU threads; the longest
files first."""

import os
from collections.abc import Iterator

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import TINY_RUN  # noqa: E402

torch.set_num_threads(2)

# The files whose tests take longest on 2 cores, longest first: `make test` hands whole files to its two pytest
# workers in collection order (`--dist loadfile --no-loadscope-reorder`), so the last files handed out are short
LONGEST_FILES = (
    "test_search.py",
    "test_workers_and_faults.py",
    "test_throughput.py",
    "test_scripted_search.py",
    "test_slurm.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: the order within a file and among the others is kept


@pytest.fixture
def tiny_run() -> tuple[str, ...]:
    return TINY_RUN


@pytest.fixture
def no_distribution_validation() -> Iterator[None]:
    """As in the trials (`distribution.validate_args: False`): validation reads every sample on the host."""
    before = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    yield
    torch.distributions.Distribution.set_default_validate_args(before)
