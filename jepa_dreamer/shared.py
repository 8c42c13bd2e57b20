"""Process-wide state that runs side by side in one process (threads) hold together."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from lightning.fabric import Fabric
from torch import Tensor


class Shared:
    """A process-wide state its users hold together: `first` sets it up as the first user comes, `last` undoes it
    as the last one leaves, `again` checks each later user against it. Users may be threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0

    @contextlib.contextmanager
    def held(
        self, first: Callable[[], None], last: Callable[[], None], again: Callable[[], None] = lambda: None
    ) -> Iterator[None]:
        with self._lock:
            (again if self._users else first)()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if not self._users:
                    last()


class GpuWork:
    """The GPU work of the runs of this process: each run holds a share of it while it trains, and a thread that must
    be alone on the device (a CUDA graph's capture, a step under the process-wide sync-debug mode) waits until every
    other run has reached `pause()` between its iterations, and holds them there.

    Why a capture must be alone: it marks the device's random generator as capturing (a draw by another thread
    raises), begins with a device-wide synchronisation (which breaks another thread's capture) and swaps the
    generator's state for its own. A thread asking to be alone gives up its own shares first, so that two runs asking
    at once take turns instead of waiting for each other; new shares wait while anyone asks."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shares = 0
        self._asking = 0
        self._alone = False
        self._local = threading.local()

    def _held(self) -> int:
        return getattr(self._local, "held", 0)

    def _take(self, n: int, first: bool) -> None:
        """Take `n` shares for this thread once no thread is alone (nor, for a `first` share, asking to be)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and not (first and self._asking))
            self._shares += n
        self._local.held = self._held() + n

    def _give(self) -> int:
        """Give up all of this thread's shares; how many it held."""
        held = self._held()
        with self._cond:
            self._shares -= held
            self._cond.notify_all()
        self._local.held = 0
        return held

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold a share while a run trains on the device."""
        self._take(1, first=True)
        try:
            yield
        finally:
            self._local.held = self._held() - 1
            with self._cond:
                self._shares -= 1
                self._cond.notify_all()

    def pause(self) -> None:
        """Between two iterations of a run: if a thread asks to be alone, wait until it is done."""
        if self._held() and self._asking:
            self._take(self._give(), first=True)

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Be the only thread of this process working on the device, then take this thread's shares back."""
        held = self._give()
        try:
            with self._cond:
                self._asking += 1
                try:
                    self._cond.wait_for(lambda: not self._alone and not self._shares)
                finally:
                    self._asking -= 1
                    self._cond.notify_all()
                self._alone = True
            try:
                yield
            finally:
                with self._cond:
                    self._alone = False
                    self._cond.notify_all()
        finally:
            self._take(held, first=False)


# One per process: the runs of a search worker's threads share its devices
gpu_work = GpuWork()


class SideBySideFabric(Fabric):
    """Lightning's Fabric, whose backward passes run one at a time in this process.

    Under mixed precision a hook on every module output checks that the backward pass came through `Fabric.backward`,
    by a flag of Lightning's module that each call sets and then clears: one thread's call ending clears it under
    another thread's pass, which then raises. One lock around each call keeps the flag set for the whole pass."""

    _backward = threading.RLock()

    def backward(self, tensor: Tensor, *args: Any, model: Any = None, **kwargs: Any) -> None:
        with self._backward:
            super().backward(tensor, *args, model=model, **kwargs)
