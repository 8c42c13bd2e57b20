"""Shared set-up: DMC renders through EGL (set before dm_control is imported) and few CPU threads."""

import os
from collections.abc import Iterator

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import TINY_RUN  # noqa: E402

torch.set_num_threads(2)


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
