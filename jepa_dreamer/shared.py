"""Process-wide state that runs side by side in one process (threads) hold together."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


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
