"""The lines a search prints as it goes: a time stamp, the worker's name when there are several, the event."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

# What a worker started by --trials-per-device prefixes its lines with
WORKER_ENV = "JEPA_SEARCH_WORKER"

Progress = Callable[[str], None]


def printer(stream: TextIO | None = None) -> Progress:
    """A `Progress` that prints `[12:00:01 w2/gpu1] line` to `stream` (stdout)."""
    worker = os.environ.get(WORKER_ENV)
    prefix = f" {worker}" if worker else ""

    def progress(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}{prefix}] {line}", file=stream or sys.stdout, flush=True)

    return progress


def time_left(elapsed: float, done: float, total: float) -> float:
    """Seconds left at the pace so far: `done` of `total` units took `elapsed` seconds."""
    return elapsed / done * max(0.0, total - done) if done else 0.0
